"""Shared machinery for the bench/bench_<family>.py suites (google_benchmark's Python binding).

A suite describes its cases as `Case` objects and calls `main(build_cases)`. One case is one
(op, device, shape, params, impl). fastops and the peers of a case get the same name apart from the
trailing `impl`, run in the same process on the same inputs, and render.py lines them up by name:

    <op>/<device>/<shape>/<key>:<value>/.../<impl>      e.g. lut_gemm/cpu/11008x4096/N:16/q:4/fastops

Every case reports wall time (CPU) or CUDA-event time (CUDA) plus the counters `bytes` and `flops`
(rates) and `roofline_frac`: the time the measured machine roofline allows divided by the time taken,
i.e. achieved bytes/s / read bandwidth for memory-bound cases, FLOP/s / matmul rate for compute-bound.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import google_benchmark as gb
import torch
import torch.nn.functional as F
from machine import cpu_model, git_commit

REPO = Path(__file__).resolve().parent.parent
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "int32",
               torch.int64: "int64"}


# ---------------------------------------------------------------------------------------------
# Machine facts and the roofline probe
# ---------------------------------------------------------------------------------------------


def cpu_last_level_cache_bytes() -> int:
    """Largest cache level on cpu0 (the L3 on x86 servers), from sysfs; 32 MiB if unreadable."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        text = (index / "size").read_text().strip()  # e.g. "32768K"
        unit = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KM")) * unit)
    return max(sizes, default=32 << 20)


def last_level_cache_bytes(device: str) -> int:
    if device == "cuda":
        # H100: 50 MB. Older torch builds lack the attribute.
        return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return cpu_last_level_cache_bytes()


def _best_seconds(fn: Callable[[], Any], device: str, reps: int) -> float:
    fn()  # warm-up: first-touch page faults, kernel selection, cuBLAS handles
    best = float("inf")
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    return best


def _linear_gflops(device: str, dtype: torch.dtype) -> float:
    """Dense x[n, k] @ w[m, k]^T rate through torch, in the nn.Linear layout every weight op here is
    compared with. On CPU, n doubles until one call takes >= 30 ms: torch's bf16 path on CPUs without
    AVX512-BF16 is ~20x slower than fp32, so no fixed size is both long enough and short enough."""
    m = k = 8192 if device == "cuda" else 2048
    n = 8192 if device == "cuda" else 32
    w = torch.randn(m, k, device=device).to(dtype)
    x = torch.randn(n, k, device=device).to(dtype)
    while device == "cpu" and n < 2048 and _best_seconds(lambda: F.linear(x, w), device, reps=1) < 0.03:
        n *= 2
        x = torch.randn(n, k, device=device).to(dtype)
    return 2 * n * m * k / _best_seconds(lambda: F.linear(x, w), device, reps=5) / 1e9


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Measured limits of one device, in the units the cases report."""

    device: str
    read_gbs: float  # multi-threaded sum over a buffer 8x the last-level cache
    copy_gbs: float  # copy_, counting read + write bytes
    write_gbs: float  # fill_ of the same buffer
    linear_gflops: dict[str, float]  # dtype name -> dense matmul rate (nn.Linear layout)

    def bound(self, nbytes: int, flops: int) -> tuple[float, str]:
        """(fastest possible seconds, "mem" | "compute") for a case moving nbytes and doing flops.
        The compute roof is the best measured dtype: the hardware's rate, not one torch path's (torch's
        CPU bf16 matmul runs at ~1/15 of fp32 on AVX2). LUT kernels do fewer operations than the
        dense-equivalent FLOPs counted here, so their compute-bound fraction can exceed 1."""
        t_mem = self.bound_mem(nbytes)
        t_compute = flops / (max(self.linear_gflops.values()) * 1e9)
        return (t_mem, "mem") if t_mem >= t_compute else (t_compute, "compute")

    def bound_mem(self, nbytes: int) -> float:
        """Seconds to read nbytes at the measured read bandwidth."""
        return nbytes / (self.read_gbs * 1e9)

    def context(self) -> dict[str, str]:
        out = {"roofline_read_gbs": f"{self.read_gbs:.2f}", "roofline_copy_gbs": f"{self.copy_gbs:.2f}",
               "roofline_write_gbs": f"{self.write_gbs:.2f}"}
        out.update({f"roofline_{k}_gflops": f"{v:.1f}" for k, v in self.linear_gflops.items()})
        return out


@functools.cache
def roofline(device: str) -> Roofline:
    """Probed once per process, at the start of a run (main() calls it before any case)."""
    buf_bytes = max(8 * last_level_cache_bytes(device), 256 << 20) if device == "cpu" else 1 << 30
    src = torch.ones(buf_bytes // 4, device=device)
    dst = torch.empty_like(src)
    # Many short reps: the best one is the estimate least disturbed by other processes.
    read = buf_bytes / _best_seconds(src.sum, device, reps=15) / 1e9
    copy_rate = 2 * buf_bytes / _best_seconds(lambda: dst.copy_(src), device, reps=15) / 1e9
    write = buf_bytes / _best_seconds(lambda: dst.fill_(-1.0), device, reps=15) / 1e9
    del src, dst
    dtypes = (torch.float16, torch.bfloat16) if device == "cuda" else (torch.float32, torch.bfloat16)
    rates = {DTYPE_NAMES[dt]: _linear_gflops(device, dt) for dt in dtypes}
    return Roofline(device, read, copy_rate, write, rates)


def gpu_clocks() -> str:
    """SM clock now / max, from nvidia-smi when present (boost clocks move CUDA numbers by ~10%)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,power.limit", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out or "unknown"


def machine_context(device: str, quick: bool) -> dict[str, str]:
    ctx = {
        "suite_device": device,
        "quick": str(quick),
        # google_benchmark adds date (local), host_name, num_cpus, caches, load_avg of its own.
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "cpu_model": cpu_model(),
        "torch_threads": str(torch.get_num_threads()),
        "cpu_last_level_cache_bytes": str(cpu_last_level_cache_bytes()),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_cuda": str(torch.version.cuda),
        "device_name": cpu_model(),
    }
    try:
        import fastops

        ctx["fastops_version"] = str(fastops.__version__)
        ctx["fastops_info"] = json.dumps(fastops.info(), default=str, sort_keys=True)
    except Exception as exc:  # the harness still runs the peers without fastops
        ctx["fastops_version"] = f"unavailable ({type(exc).__name__}: {exc})"
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        ctx["device_name"] = torch.cuda.get_device_name(0)
        ctx["cuda_capability"] = f"{props.major}.{props.minor}"
        ctx["cuda_sm_count"] = str(props.multi_processor_count)
        ctx["cuda_l2_bytes"] = str(last_level_cache_bytes("cuda"))
        ctx["cuda_clocks_sm_now_max_power"] = gpu_clocks()
    return ctx


# ---------------------------------------------------------------------------------------------
# Operands: cache-busting rotation and per-shape memo
# ---------------------------------------------------------------------------------------------


def nbytes_of(operand: Any) -> int:
    """Bytes of a tensor, a tuple of them, or a packed format that reports its own `.nbytes`."""
    if isinstance(operand, (tuple, list)):
        return sum(nbytes_of(o) for o in operand)
    return operand.nbytes


class Rotation:
    """Independent copies of an operand, handed out in turn, one per call.

    A memory-bound op timed on one weight measures the cache once the weight fits in it (a 4096x4096
    2-bit weight is 4 MB, the L3 is 32 MB). Cycling through copies whose total exceeds twice the last
    level cache, and never fewer than `min_copies`, makes every call read its weight from DRAM/HBM.
    """

    def __init__(self, base: Any, device: str, min_copies: int = 8):
        self.copy_bytes = nbytes_of(base)
        n = max(min_copies, -(-2 * last_level_cache_bytes(device) // max(self.copy_bytes, 1)))
        # deepcopy clones every tensor inside (tensors, tuples, frozen dataclasses like LutWeight).
        self.items = [base] + [copy.deepcopy(base) for _ in range(n - 1)]
        self._next = 0

    def next(self) -> Any:
        item = self.items[self._next]
        self._next = (self._next + 1) % len(self.items)
        return item


_memo_group: Any = None
_memo: dict[Any, Any] = {}


def memo(key: Any, make: Callable[[], Any]) -> Any:
    """Operands shared by the cases of one group (device, op, shape): a weight rotation serves every N
    and every call google_benchmark makes of a case. A new group frees the previous one, so memory
    holds one shape at a time (fp32 11008x4096 x 8 copies is already 1.4 GB)."""
    if key not in _memo:
        _memo[key] = make()
    return _memo[key]


def _enter_group(group: Any) -> None:
    global _memo_group
    if group != _memo_group:
        _memo.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _memo_group = group


def seeded_randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Same values for every impl of a case, on any device: generated on the CPU, moved by the caller."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """What a case times: `run(item)` for item from `operands.next()`."""

    run: Callable[[Any], Any]
    operands: Rotation
    nbytes: int  # bytes one call must move at least (packed weight + x + y)
    flops: int  # dense-equivalent FLOPs of one call (2*N*M*K for a GEMM)
    dtype: torch.dtype  # of the activations, shown in the label


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    device: str
    shape: str
    params: dict[str, Any]
    impl: str
    prepare: Callable[[], Prepared]  # runs inside the benchmark, so filtered-out cases cost nothing
    rows: int = 0  # rows (or items) one call handles, for per-row ops: adds the rows_per_s counter

    @property
    def name(self) -> str:
        parts = [self.op, self.device, self.shape, *(f"{k}:{v}" for k, v in self.params.items()), self.impl]
        return "/".join(parts)


@functools.cache
def _gpu_cycles_per_second() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(20_000_000)
    end.record()
    end.synchronize()
    return 20_000_000 / (start.elapsed_time(end) / 1e3)


def _time_cpu(state: Any, prep: Prepared) -> float:
    t0 = time.perf_counter()
    while state:
        prep.run(prep.operands.next())
    return time.perf_counter() - t0


def _time_cuda(state: Any, prep: Prepared) -> float:
    """One google_benchmark iteration is one call; events bracket a batch (one pass over the
    rotation) and the batch time goes to set_iteration_time, which google_benchmark sums.

    Before each batch the GPU sleeps for twice the time Python took to enqueue a batch (a fastops
    call costs tens of us of host time): the calls queue up behind the sleep, so the events time
    back-to-back kernels, not launch gaps."""
    batch = len(prep.operands.items)
    t0 = time.perf_counter()
    for _ in range(batch):
        prep.run(prep.operands.next())
    sleep_cycles = int(2 * (time.perf_counter() - t0) * _gpu_cycles_per_second())
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    total, done = 0.0, 0

    def close_batch() -> float:
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        state.set_iteration_time(seconds)
        return seconds

    while state:
        if done % batch == 0:
            torch.cuda._sleep(sleep_cycles)
            start.record()
        prep.run(prep.operands.next())
        done += 1
        if done % batch == 0:
            total += close_batch()
    if done % batch:
        total += close_batch()
    return total


def _benchmark_fn(case: Case) -> Callable[[Any], None]:
    def fn(state: Any) -> None:
        if case.device == "cuda" and not torch.cuda.is_available():
            state.skip_with_error("no CUDA device (torch.cuda.is_available() is False)")
            return
        # A Python exception would abort google_benchmark's whole run: report it on this case instead.
        try:
            _enter_group((case.device, case.op, case.shape))
            prep = memo(("prepared", case.name), case.prepare)
            prep.run(prep.operands.next())  # warm-up; also surfaces unsupported inputs before timing
            if case.device == "cuda":
                seconds = _time_cuda(state, prep)
            else:
                seconds = _time_cpu(state, prep)
        except Exception as exc:
            state.skip_with_error(f"{type(exc).__name__}: {exc}"[:300])
            return
        roof_seconds, bound = roofline(case.device).bound(prep.nbytes, prep.flops)
        state.counters["bytes"] = gb.Counter(prep.nbytes, gb.Counter.kIsIterationInvariantRate)
        state.counters["flops"] = gb.Counter(prep.flops, gb.Counter.kIsIterationInvariantRate)
        state.counters["roofline_frac"] = roof_seconds * state.iterations / seconds
        # Fraction of the measured read bandwidth, whatever the binding roof: the figure of merit of
        # weight-streaming kernels at small N.
        roof = roofline(case.device)
        state.counters["mem_frac"] = roof.bound_mem(prep.nbytes) * state.iterations / seconds
        # The same against the write bandwidth: the roof of ops that mostly write `bytes` (masking logits).
        state.counters["write_frac"] = prep.nbytes / (roof.write_gbs * 1e9) * state.iterations / seconds
        if case.rows:
            state.counters["rows_per_s"] = gb.Counter(case.rows, gb.Counter.kIsIterationInvariantRate)
        state.set_label(f"{DTYPE_NAMES[prep.dtype]} {bound}-bound")

    return fn


def register(case: Case) -> None:
    options = gb.option.unit(gb.kMicrosecond)(_benchmark_fn(case))
    # CPU kernels are multi-threaded: wall time, not the main thread's CPU time.
    options = (gb.option.use_manual_time() if case.device == "cuda" else gb.option.use_real_time())(options)
    gb.register(options, name=case.name)


def main(build_cases: Callable[[str, bool], list[Case]]) -> None:
    """Entry point of a suite: `python bench/bench_<family>.py [--device cpu|cuda] [--quick]
    [--threads T] [google_benchmark flags]`. build_cases(device, quick) returns the cases in run
    order; keep the cases of one shape together (the memo frees operands when the shape changes)."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Other arguments go to google_benchmark (--benchmark_filter=...).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="reduced case set (bench/run.py --quick)")
    parser.add_argument("--threads", type=int, help="torch (and so fastops) CPU threads; default 2 for "
                        "--device cpu, torch's default for cuda (only host-side setup runs on the CPU)")
    args, gb_argv = parser.parse_known_args()
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 2)
    if not any(a.startswith("--benchmark_min_time") for a in gb_argv):
        gb_argv.append("--benchmark_min_time=0.05s")

    for key, value in machine_context(args.device, args.quick).items():
        gb.add_custom_context(key, value)
    if args.device == "cpu" or torch.cuda.is_available():
        for key, value in roofline(args.device).context().items():
            gb.add_custom_context(key, value)
    for case in build_cases(args.device, args.quick):
        register(case)
    gb.main([sys.argv[0], *gb_argv])


# ---------------------------------------------------------------------------------------------
# Write-bound ops (trie masks): write bandwidth probe and rows/s counters
