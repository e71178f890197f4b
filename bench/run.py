"""Run every bench/bench_*.py suite on the devices present and print ratios vs peers.

    python bench/run.py [--quick] [--filter REGEX] [--device cpu|cuda|all] [--out DIR] [--repetitions R]

Each suite runs in its own process per device (a crash or a CUDA fault takes down only that suite)
and writes google_benchmark JSON to <out>/<suite>-<device>-<YYYYmmdd-HHMMSS>.json. Exits non-zero
when a suite crashes or writes no JSON. `python bench/render.py` turns the JSON into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

import render

BENCH = Path(__file__).resolve().parent


def devices(choice: str) -> list[str]:
    if choice != "all":
        return [choice]  # an explicit cuda without a GPU still runs: every case reports why it skipped
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced case set, < 3 min on 2 CPU cores")
    parser.add_argument("--filter", help="regex over case names, passed to --benchmark_filter")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--min-time", default="0.05s", help="google_benchmark --benchmark_min_time")
    parser.add_argument("--repetitions", type=int, default=1,
                        help="> 1: repeat each case and keep the median (steadier on a shared machine)")
    args = parser.parse_args()
    if args.filter:
        try:  # google_benchmark reports a bad regex on stderr and still exits 0
            re.compile(args.filter)
        except re.error as exc:
            parser.error(f"--filter: {exc}")

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    written, failed = [], []
    for suite in sorted(BENCH.glob("bench_*.py")):
        name = suite.stem.removeprefix("bench_")
        for device in devices(args.device):
            out = args.out / f"{name}-{device}-{stamp}.json"
            cmd = [sys.executable, str(suite), "--device", device, f"--benchmark_min_time={args.min_time}",
                   f"--benchmark_out={out}", "--benchmark_out_format=json"]
            cmd += ["--quick"] if args.quick else []
            if args.repetitions > 1:
                cmd += [f"--benchmark_repetitions={args.repetitions}", "--benchmark_report_aggregates_only=true"]
            cmd += [f"--benchmark_filter={args.filter}"] if args.filter else []
            print(f"### {name} on {device}: {' '.join(cmd)}", flush=True)
            t_suite = time.perf_counter()
            rc = subprocess.run(cmd).returncode
            print(f"### {name} on {device}: exit {rc} in {time.perf_counter() - t_suite:.1f} s", flush=True)
            if rc != 0 or not out.exists():
                failed.append(f"{name}/{device} (exit {rc})")
            elif out.stat().st_size == 0:  # google_benchmark's answer to a filter that matches nothing
                print(f"### {name} on {device}: no case matches --filter", flush=True)
                out.unlink()
            else:
                written.append(out)

    if written:
        print("\n" + render.summary([render.load(p) for p in written]))
    print(f"wrote {len(written)} JSON file(s) under {args.out} in {time.perf_counter() - t0:.1f} s")
    if failed:
        print("FAILED suites: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
