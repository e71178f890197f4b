"""fastops: fast low-level operators for PyTorch, with CUDA and multi-threaded SIMD CPU kernels.

    w = fastops.lut.quantize(linear.weight, bits=2)     # packed low-bit weight
    y = fastops.lut_gemm(x, w)                          # x[..., K] fp16/bf16/fp32 on CPU or CUDA
    c = fastops.bitgemm.gemm(a, w)                      # exact low-bit integer GEMM (bit-sliced)
    y = fastops.spmm(x, fastops.sparse.pack(w_pruned))  # unstructured-sparse weight (exact)
    m = fastops.so3.TensorProductConv(...)(x, sh, w, senders, receivers)  # e3nn-exact equivariant TP
"""
from . import _C
from ._info import format_info, info
from . import bitgemm, lut, nn, so3, sparse, trie
from .lut import LutWeight, lut_gemm
from .sparse import SparseWeight, spmm

__version__ = _C.__version__
built_with_cuda = bool(_C.built_with_cuda)


def cuda_available() -> bool:
    """True when fastops has CUDA kernels and a usable CUDA device is present."""
    if not built_with_cuda:
        return False
    try:
        return _C.cuda_device_count() > 0
    except RuntimeError:
        return False


def set_cpu_isa(name: str) -> None:
    """Lower the SIMD level of the CPU kernels ('scalar', 'avx2', 'avx512') or restore 'auto'."""
    _C.set_isa(name)


__all__ = ["bitgemm", "lut", "nn", "so3", "sparse", "trie", "lut_gemm", "LutWeight", "spmm", "SparseWeight", "info", "format_info", "cuda_available", "set_cpu_isa",
           "built_with_cuda", "__version__"]
