"""Render BENCHMARKS.md and one plot per op family from google_benchmark JSON files.

    python bench/render.py                      # newest <suite>-<device>-<stamp>.json per suite and device
    python bench/render.py bench/results/lut-cpu-20250101-120000.json ...

Case names follow bench/harness.py: <op>/<device>/<shape>/<key>:<value>/.../<impl>. Rows are the
fastops cases; a peer case fills a row's column when its shape matches and its params are a subset
of the row's (torch_fp32 at N:16 serves the rows N:16/q:2 and N:16/q:4).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
OURS = "fastops"
RUN_FILE = re.compile(r"(?P<suite>.+)-(?P<device>cpu|cuda)-(?P<stamp>\d{8}-\d{6})\.json$")
TO_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


@dataclasses.dataclass
class Result:
    op: str
    device: str
    shape: str
    params: dict[str, str]
    impl: str
    time_us: float | None  # None when the case was skipped
    roofline: float | None
    mem_frac: float | None
    label: str
    error: str | None


@dataclasses.dataclass
class Run:
    path: Path
    context: dict
    results: list[Result]


def parse(entry: dict) -> Result:
    # google_benchmark appends /real_time or /manual_time to the registered name.
    parts = re.sub(r"/(real|manual)_time$", "", entry["name"]).split("/")
    op, device, shape, *kv, impl = parts
    params = dict(p.split(":", 1) for p in kv)
    error = entry.get("error_message") if entry.get("error_occurred") else None
    time_us = None if error else entry["real_time"] * TO_US[entry["time_unit"]]
    return Result(op, device, shape, params, impl, time_us, entry.get("roofline_frac"), entry.get("mem_frac"),
                  entry.get("label", ""), error)


def load(path: Path) -> Run:
    data = json.loads(path.read_text())
    entries = [e for e in data["benchmarks"] if e.get("run_type", "iteration") == "iteration"]
    # With --benchmark_repetitions the median aggregate replaces the single runs.
    medians = {e["run_name"]: e for e in data["benchmarks"] if e.get("aggregate_name") == "median"}
    if medians:
        skipped = [e for e in entries if e.get("error_occurred")]  # skipped cases have no aggregates
        entries = [e | {"name": e["run_name"]} for e in medians.values()] + skipped
    return Run(path, data.get("context", {}), [parse(e) for e in entries])


def cpu_isa(context: dict) -> str:
    """The CPU kernel ISA a run used ("avx512", "avx2", ...; "" if unrecorded)."""
    return json.loads(context["fastops_info"]).get("cpu_isa", "") if "fastops_info" in context else ""


def latest_runs(results_dir: Path) -> list[Path]:
    """Newest file per suite, device and CPU ISA: runs on machines with different kernels all stay."""
    newest: dict[tuple[str, str, str], Path] = {}
    for path in sorted(results_dir.glob("*.json")):  # stamps sort in time order
        match = RUN_FILE.match(path.name)
        if match:
            isa = cpu_isa(json.loads(path.read_text()).get("context", {}))
            newest[match["suite"], match["device"], isa] = path
    return list(newest.values())


def fmt_us(t: float) -> str:
    return f"{t:,.0f}" if t >= 100 else f"{t:.1f}" if t >= 10 else f"{t:.2f}"


def family_table(results: list[Result]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes) for the results of one (op, device)."""
    ours = [r for r in results if r.impl == OURS]
    peers = list(dict.fromkeys(r.impl for r in results if r.impl != OURS))
    keys = list(dict.fromkeys(k for r in ours for k in r.params if k != "N"))
    headers = ["shape", "N", *keys, "fastops µs", "roofline", "mem BW", *(f"{p} µs (×)" for p in peers)]
    rows = []
    for row in ours:
        cells = [row.shape, row.params.get("N", ""), *(row.params.get(k, "") for k in keys)]
        if row.time_us is None:
            cells += ["skipped", "", ""]
        else:
            bound = row.label.split()[-1].removesuffix("-bound") if row.label else ""
            cells += [fmt_us(row.time_us), f"{100 * row.roofline:.0f}% {bound}" if row.roofline is not None else "",
                      f"{100 * row.mem_frac:.0f}%" if row.mem_frac is not None else ""]
        for peer in peers:
            match = next((r for r in results if r.impl == peer and r.shape == row.shape
                          and r.params.items() <= row.params.items()), None)
            if match is None:
                cells.append("")
            elif match.time_us is None:
                cells.append("skipped")
            elif row.time_us is None:
                cells.append(fmt_us(match.time_us))
            else:
                cells.append(f"{fmt_us(match.time_us)} ({match.time_us / row.time_us:.2f}×)")
        rows.append(cells)
    errors = dict.fromkeys(f"{r.impl}: {r.error}" for r in results if r.error)
    return headers, rows, [f"skipped {e}" for e in errors]


def by_family(runs: list[Run]) -> dict[tuple[str, str], list[Result]]:
    """Results by (op, device label); CPU labels name the kernel ISA, e.g. "cpu (avx2)"."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for run in runs:
        isa = cpu_isa(run.context)
        for r in run.results:
            label = f"{r.device} ({isa})" if r.device == "cpu" and isa else r.device
            groups.setdefault((r.op, label), []).append(r)
    return groups


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in [headers, *rows])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def summary(runs: list[Run]) -> str:
    """Plain-text tables for a terminal (bench/run.py prints this)."""
    out = []
    for (op, device), results in by_family(runs).items():
        headers, rows, notes = family_table(results)
        out += [f"== {op} on {device} (ratio = peer time / fastops time; > 1: fastops faster)",
                text_table(headers, rows), *notes, ""]
    return "\n".join(out)


def plot(op: str, groups: dict[tuple[str, str], list[Result]], path: Path) -> bool:
    """Time per call vs N, one panel per (device, shape) with results, one line per impl and variant.
    Returns False (and writes nothing) when every case of the op was skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((dev, r.shape) for (o, dev), rs in groups.items() if o == op
                                for r in rs if r.time_us is not None))
    if not panels:
        return False
    def series_label(r: Result) -> str:
        return " ".join([r.impl, *(f"{k}={v}" for k, v in r.params.items() if k != "N")])

    # One colour per series across panels; tab20 because a family easily has more than 10 series.
    labels = dict.fromkeys(series_label(r) for (o, _), rs in groups.items() if o == op for r in rs)
    colors = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    if not any("N" in r.params for (o, _), rs in groups.items() if o == op for r in rs):
        return _bar_plot(op, groups, path, plt)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (device, shape) in zip(axes[0], panels):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in groups[op, device]:
            if r.shape == shape and r.time_us is not None and "N" in r.params:
                series.setdefault(series_label(r), []).append((int(r.params["N"]), r.time_us))
        for label, points in series.items():
            points.sort()
            style = "-o" if label.startswith(OURS) else "--s"
            ax.plot(*zip(*points), style, label=label, color=colors[label], markersize=4)
        ax.set(xscale="log", yscale="log", xlabel="N (batch rows)", ylabel="µs per call", title=f"{op} {device} {shape}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _bar_plot(op: str, groups: dict[tuple[str, str], list[Result]], path: Path, plt) -> bool:
    """For ops without an N axis: one horizontal bar per (case, impl), time on a log axis."""
    cases = [r for (o, _), rs in groups.items() if o == op for r in rs if r.time_us is not None]
    case_label = lambda r: " ".join([r.device, r.shape, *(f"{k}={v}" for k, v in r.params.items())])  # noqa: E731
    impls = list(dict.fromkeys(r.impl for r in cases))
    colors = {impl: plt.get_cmap("tab10")(i % 10) for i, impl in enumerate(impls)}
    labels = list(dict.fromkeys(case_label(r) for r in cases))
    height = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.35 * len(labels) * len(impls)))
    for j, impl in enumerate(impls):
        points = [(labels.index(case_label(r)), r.time_us) for r in cases if r.impl == impl]
        ax.barh([i + j * height for i, _ in points], [t for _, t in points], height=height, label=impl,
                color=colors[impl])
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xscale="log", xlabel="µs per call", title=op)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def runs_header(runs: list[Run]) -> str:
    headers = ["suite file", "device", "measured on", "threads", "date (UTC)", "commit", "torch", "fastops",
               "read GB/s", "copy GB/s", "matmul GFLOP/s", "load avg", "quick"]
    rows = []
    for run in runs:
        c = run.context
        gflops = ", ".join(f"{k.split('_')[1]} {v}" for k, v in c.items() if k.endswith("_gflops"))
        isa = cpu_isa(c)
        rows.append([run.path.name, c.get("suite_device", ""), c.get("device_name", ""), c.get("torch_threads", ""),
                     c.get("date_utc", ""), c.get("git_commit", ""), c.get("torch_version", ""),
                     f"{c.get('fastops_version', '')} {isa}".strip(), c.get("roofline_read_gbs", ""),
                     c.get("roofline_copy_gbs", ""), gflops, " ".join(f"{v:.1f}" for v in c.get("load_avg", [])),
                     c.get("quick", "")])
    return markdown_table(headers, rows)


def quality_section(results: Path) -> list[str]:
    """The newest bench/quality.py report (quality-<stamp>.md), under its own heading; none if absent."""
    reports = sorted(results.glob("quality-*.md"))
    if not reports:
        return []
    return ["## lut quantization quality (bench/quality.py)", "",
            f"From `{reports[-1].name}` (`python bench/quality.py`; re-render with `--render <json>`).", "",
            reports[-1].read_text().strip(), ""]


def render(runs: list[Run], md_path: Path, plot_dir: Path) -> None:
    groups = by_family(runs)
    lines = [
        "# fastops benchmarks",
        "",
        "Generated by `python bench/render.py` from the JSON that `python bench/run.py [--quick]` writes to",
        "`bench/results/` (`bash bench/gpu_check.sh` runs the CUDA suites on a GPU box); do not edit by hand.",
        "Times are per call in µs (wall time on CPU, CUDA-event time on GPU, weights rotated so each call",
        "reads them from DRAM/HBM). A peer cell is `time (peer / fastops)`: above 1.00× fastops is faster.",
        "`roofline` is the measured machine roofline's time over the measured time, with the binding roof:",
        "`mem` = bytes moved / read bandwidth, `compute` = dense-equivalent FLOPs / best dense matmul rate",
        "(LUT kernels do fewer operations than dense FLOPs, so they can pass 100% there).",
        "`mem BW` is always bytes moved / read bandwidth over the measured time: the fraction of the",
        "memory-read roofline that weight-streaming kernels reach at small N.",
        "",
        "## Runs: which numbers were measured where",
        "",
        runs_header(runs),
        "",
    ]
    measured = {r.context.get("device", "") for r in runs} | {res.device for r in runs for res in r.results
                                                            if res.time_us is not None}
    if "cuda" not in measured:
        lines += ["No CUDA numbers yet: no run above had a GPU. `bash bench/gpu_check.sh` on an H100 box",
                  "produces them (copy its JSON into `bench/results/`, then re-render).", ""]
    for op in dict.fromkeys(o for o, _ in groups):
        plot_path = plot_dir / f"{op}.png"
        lines += [f"## {op}", ""]
        if plot(op, groups, plot_path):
            lines += [f"![{op}]({os.path.relpath(plot_path, md_path.parent)})", ""]
        for (o, device), results in groups.items():
            if o == op:
                headers, rows, notes = family_table(results)
                lines += [f"### {op} on {device}", "", markdown_table(headers, rows), ""]
                lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += quality_section(plot_dir)
    md_path.write_text("\n".join(lines).rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*", type=Path, help="result files (default: newest per suite and device)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to look for JSON and write plots")
    parser.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    paths = args.json or latest_runs(args.results)
    if not paths:
        raise SystemExit(f"no <suite>-<device>-<stamp>.json under {args.results}; run bench/run.py first")
    render([load(p) for p in paths], args.md.resolve(), args.results.resolve())
    print(f"wrote {args.md} and plots under {args.results}")


if __name__ == "__main__":
    main()
