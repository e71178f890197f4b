"""The one tolerance table of the test suite. Errors are relative norms ||y - ref|| / ||ref|| against a
float64 reference unless a test says otherwise; keys are (op, mode, dtype)."""
import torch

REL_ERR = {
    # Default CPU mode: int8 tables (documented bound 1e-2 on normal data), plus output rounding.
    ("lut_gemm", "default", torch.float32): 1e-2,
    ("lut_gemm", "default", torch.float16): 1e-2,
    ("lut_gemm", "default", torch.bfloat16): 1.2e-2,
    # precise: float32 tables and accumulation; the output dtype's rounding dominates.
    ("lut_gemm", "precise", torch.float32): 1e-5,
    ("lut_gemm", "precise", torch.float16): 1e-3,
    ("lut_gemm", "precise", torch.bfloat16): 8e-3,
    # CUDA kernels: float tables / tensor cores with fp32 accumulation (no int8 tables).
    ("lut_gemm", "cuda", torch.float32): 1e-5,
    ("lut_gemm", "cuda", torch.float16): 1e-3,
    ("lut_gemm", "cuda", torch.bfloat16): 8e-3,
    # bitgemm.gemm_scaled: exact integer products, fp32 scaling across groups, one output rounding.
    ("bitgemm_scaled", "cpu", torch.float32): 1e-6,
    ("bitgemm_scaled", "cpu", torch.float16): 1e-3,
    ("bitgemm_scaled", "cpu", torch.bfloat16): 8e-3,
    ("bitgemm_scaled", "cuda", torch.float32): 1e-6,
    ("bitgemm_scaled", "cuda", torch.float16): 1e-3,
    ("bitgemm_scaled", "cuda", torch.bfloat16): 8e-3,
}

# spmm, elementwise: |y - ref| <= bound * (sum_c |x w| + |bias|) against the float64 product. fp32
# accumulation in any order, then one rounding to the output dtype.
SPMM_ELEMENT_BOUND = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().cpu().double(), ref.detach().cpu().double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def lut_bound(device: str, precise: bool, dtype: torch.dtype) -> float:
    mode = "cuda" if device == "cuda" else ("precise" if precise else "default")
    return REL_ERR[("lut_gemm", mode, dtype)]
