"""fastops.info(): what was built, what this machine offers, and which kernels will run."""
from __future__ import annotations

import torch

from . import _C


def _cuda_devices() -> tuple[list, str]:
    if not _C.built_with_cuda:
        return [], "fastops was built without CUDA"
    try:
        count = _C.cuda_device_count()
    except RuntimeError as e:  # no driver / no device: report, never fail
        return [], str(e)
    devices = []
    for i in range(count):
        major, minor = _C.cuda_device_capability(i)
        name = torch.cuda.get_device_name(i) if torch.cuda.is_available() else f"device {i}"
        devices.append({"index": i, "name": name, "capability": f"{major}.{minor}"})
    return devices, "" if devices else "no CUDA device"


def info() -> dict:
    devices, cuda_note = _cuda_devices()
    from .lut import _default_dense_path as _lut_default_dense_path
    return {
        "version": _C.__version__,
        "built_with_cuda": bool(_C.built_with_cuda),
        "cuda_archs": _C.cuda_archs,
        "cutlass_headers_found": bool(_C.cutlass_headers_found),
        "cutlass_used": False,  # no kernel includes CUTLASS/CuTe yet
        "cuda_devices": devices,
        "cuda_note": cuda_note,
        "cpu_features": dict(_C.cpu_features()),
        "cpu_isa_best": _C.best_isa(),
        "cpu_isa": _C.active_isa(),
        "cpu_threads": torch.get_num_threads(),
        "kernels": {"lut_gemm (cpu)": _C.lut_cpu_kernel_name(False),
                    "lut_gemm (cpu, precise)": _C.lut_cpu_kernel_name(True),
                    "lut_gemm (cpu, long batches)": _lut_default_dense_path(),
                    "bitgemm W4A8 (cpu, 1 / 256 rows)": ", ".join(_C.bitgemm_cpu_kernel_name(m, 8, 4) for m in (1, 256)),
                    "spmm (cpu)": _C.sparse_cpu_kernel_name(),
                    "so3 tensor product (cpu)": _C.so3_cpu_kernel_name()},
        "torch": torch.__version__,
        "torch_cuda_available": torch.cuda.is_available(),
    }


def format_info(d: dict | None = None) -> str:
    d = info() if d is None else d
    feats = ", ".join(k for k, v in d["cpu_features"].items() if v) or "none"
    lines = [
        f"fastops {d['version']} (torch {d['torch']})",
        f"  CUDA kernels built : {'yes, archs ' + d['cuda_archs'] if d['built_with_cuda'] else 'no (CPU-only build)'}",
        f"  CUTLASS headers    : {'found' if d['cutlass_headers_found'] else 'not found'} (used by kernels: {'yes' if d['cutlass_used'] else 'no'})",
    ]
    if d["cuda_devices"]:
        for dev in d["cuda_devices"]:
            lines.append(f"  CUDA device {dev['index']}      : {dev['name']} (sm_{dev['capability'].replace('.', '')})")
    else:
        lines.append(f"  CUDA devices       : none ({d['cuda_note']})")
    lines += [
        f"  CPU features       : {feats}",
        f"  CPU kernel ISA     : {d['cpu_isa']} (best available: {d['cpu_isa_best']}; set FASTOPS_ISA to lower it)",
        f"  CPU threads        : {d['cpu_threads']} (torch.get_num_threads())",
    ]
    for name, kernel in d["kernels"].items():
        lines.append(f"  {name:<19}: {kernel}")
    return "\n".join(lines)
