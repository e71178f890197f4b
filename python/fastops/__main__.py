"""python -m fastops info | check | bench"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="build configuration, CPU features, CUDA devices, chosen kernels")
    sub.add_parser("check", help="run every operator against its reference on every device")
    bench = sub.add_parser("bench", help="run bench/run.py from a source checkout (extra args are passed on)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)

    if ns.command == "info":
        from ._info import format_info
        print(format_info())
        return 0
    if ns.command == "check":
        from ._check import main as check_main
        return check_main()
    script = os.path.join(os.getcwd(), "bench", "run.py")
    if not os.path.exists(script):
        print("python -m fastops bench: run it from a fastops source checkout (bench/run.py not found here)",
              file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, script, *ns.args])


if __name__ == "__main__":
    sys.exit(main())
