"""Plumbing shared by every family's Python layer: argument checks with uniform messages, and the
device, stream and thread-count choices. Messages always name the operation, the argument, what was
expected and what was received."""
from __future__ import annotations

import fnmatch
import functools
import inspect
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from . import _C

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Wire codes of csrc/common/dtype.h (DType).
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(op: str, name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_dtype(op: str, name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    check_tensor(op, name, t)
    if t.dtype not in allowed:
        raise TypeError(f"{op}: {name} must have dtype {_dtype_names(allowed)}; got {str(t.dtype).replace('torch.', '')}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence) -> None:
    """`expected` may contain None for "any size" in that dimension."""
    check_tensor(op, name, t)
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    if not ok:
        shown = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{op}: {name} must have shape {shown}; got {list(t.shape)}")


def check_same_device(op: str, ref_name: str, ref: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                             f"move them to the same device")


def check_finite(op: str, name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{op}: {name} contains NaN or infinite values")


def check_int(op: str, name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{op}: {name} must be in {rng}, got {value}")
    return value


def check_device_usable(op: str, t: torch.Tensor) -> None:
    """Raises RuntimeError when fastops cannot run on t's device (CPU-only build, a GPU older than sm_80,
    unknown device)."""
    if t.device.type == "cuda":
        if not _C.built_with_cuda:
            raise RuntimeError(f"{op}: fastops was built without CUDA; reinstall with FASTOPS_CUDA=ON "
                               f"CUDACXX=/usr/local/cuda/bin/nvcc (see README)")
        if torch.compiler.is_compiling():  # not traced: an older GPU then fails at launch (no kernel image)
            return
        major, minor = _cuda_capability(t.device.index if t.device.index is not None else torch.cuda.current_device())
        if major < 8:
            raise RuntimeError(f"{op}: fastops: no usable CUDA device: {t.device} has compute capability "
                               f"{major}.{minor}; the CUDA kernels need 8.0 (Ampere) or newer")
    elif t.device.type not in ("cpu", "meta"):
        raise ValueError(f"{op}: tensors on {t.device.type} are not supported (CPU or CUDA only)")


def check_indices(op: str, checks: Sequence[tuple]) -> None:
    """Each (name, index, rows[, sorts]): an int64 index vector, all on one device, whose entries must lie in
    [0, rows), or, when `sorts` is given (a [rows] key tensor), that must be a permutation of [0, rows)
    listing the keys in non-decreasing order (an order of samples by reduced row); ValueError names the
    first bad one. On CUDA the checks cost one host synchronization together, so they are skipped while
    torch.compile traces or a CUDA graph is captured (no synchronization is possible there): indices are
    trusted then."""
    pending = [(c[0], c[1], c[2], c[3] if len(c) > 3 else None) for c in checks if c[1] is not None and c[1].numel()]
    if not pending or torch.compiler.is_compiling():
        return
    if pending[0][1].device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    flags = []
    for name, index, rows, sorts in pending:
        if sorts is None:
            flags.append(((index < 0) | (index >= rows)).any())
            continue
        if index.numel() != rows:
            raise ValueError(f"{op}: {name} must be a permutation of [0, {rows}); it has {index.numel()} entries")
        keys = sorts[index.clamp(0, rows - 1)]  # clamped: a bad entry fails the permutation test, not the gather
        flags.append((index.sort().values != torch.arange(rows, device=index.device)).any() |
                     (keys[1:] < keys[:-1]).any())
    for (name, _, rows, sorts), bad in zip(pending, torch.stack(flags).tolist()):  # the one synchronization
        if bad:
            raise ValueError(f"{op}: {name} has entries outside [0, {rows})" if sorts is None else
                             f"{op}: {name} must be a permutation of [0, {rows}) that sorts the samples by their "
                             "reduced row (so3.edge_orders gives both orders)")


@functools.lru_cache(maxsize=None)
def _cuda_capability(device_index: int) -> tuple[int, int]:
    return tuple(_C.cuda_device_capability(device_index))


def cuda_stream(device: torch.device) -> int:
    """The raw cudaStream_t of torch's current stream on `device`, as an int (0 for CPU)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.current_stream(device).cuda_stream


def contiguous_last_dim(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t itself when its last dimension is contiguous (what the kernels read), else a contiguous copy. The
    modules pass such views; other callers of the ops (autograd, torch.compile) may not."""
    return t if t is None or t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def num_threads() -> int:
    """CPU kernels use torch's intra-op thread count, so nothing oversubscribes when torch runs too."""
    return max(1, torch.get_num_threads())


def call_c(fn, *args, **kwargs):
    """fn (a fastops._C binding) with every tensor argument handed over as a DLPack capsule.

    nanobind imports a plain tensor through torch's Python-level __dlpack__ (~2 us per tensor); a
    capsule from torch.utils.dlpack.to_dlpack costs ~0.3 us, which matters at decode sizes (a bitgemm
    call passes eight tensors). The memory is the same: outputs are written in place.
    """
    def capsule(v):
        return torch.utils.dlpack.to_dlpack(v) if isinstance(v, torch.Tensor) else v

    return fn(*[capsule(a) for a in args], **{k: capsule(v) for k, v in kwargs.items()})


class CustomOp:
    """A torch custom op (torch.library.custom_op) whose plain eager calls run its implementation
    directly: torch 2.13's dispatcher costs 10-30 us per custom-op call, more than a decode-sized kernel.

    The dispatcher still runs whenever something may need it: under torch.compile or jit tracing,
    a dispatch or function mode (FakeTensorMode, ...), a functorch transform (vmap, grad), for tensor
    subclasses, tensors on other devices than CPU and CUDA, keyword, list or tuple arguments, and
    whenever autograd records (grad mode on and a tensor argument requiring grad). A direct call bumps
    the version counter of each mutated argument, as the dispatcher does. Everything else
    (register_fake, register_autograd, ...) is the custom op's."""

    _tensor = torch.Tensor
    _checks = (torch._C._len_torch_dispatch_stack, torch._C._is_torch_function_mode_enabled, torch._C._is_tracing)

    def __init__(self, op, impl, mutated: tuple[int, ...]):
        self._op, self._impl, self._mutated = op, impl, mutated

    def _direct(self, args) -> bool:
        if torch.compiler.is_compiling():  # first: Dynamo folds it, and cannot trace the checks below
            return False
        if any(check() for check in self._checks) or torch._C._functorch.peek_interpreter_stack() is not None:
            return False
        grad = torch.is_grad_enabled()
        tensor = self._tensor
        for a in args:
            if isinstance(a, (list, tuple)):  # tensor lists: let the dispatcher look inside
                return False
            if isinstance(a, tensor) and (type(a) is not tensor or (grad and a.requires_grad)
                                          or not (a.is_cpu or a.is_cuda)):
                return False
        return True

    def __call__(self, *args, **kwargs):
        if kwargs or not self._direct(args):
            return self._op(*args, **kwargs)
        out = self._impl(*args)
        for i in self._mutated:
            torch.autograd.graph.increment_version(args[i])
        return out

    def __getattr__(self, name):
        return getattr(self._op, name)


def custom_op(name: str, *, mutates_args: tuple[str, ...] = (), device_types=("cpu", "cuda")):
    """torch.library.custom_op(name, mutates_args=..., device_types=...) as a CustomOp."""
    def wrap(fn):
        params = list(inspect.signature(fn).parameters)
        op = torch.library.custom_op(name, mutates_args=mutates_args, device_types=device_types)(fn)
        return CustomOp(op, fn, tuple(params.index(a) for a in mutates_args))

    return wrap


# Module-name glob patterns or a predicate (name, module) -> bool: which nn.Linear layers a whole-model
# conversion leaves alone.
SkipSpec = Union[None, Iterable[str], Callable[[str, torch.nn.Module], bool]]


def _skipped(skip: SkipSpec, name: str, module: torch.nn.Module) -> bool:
    if skip is None:
        return False
    if callable(skip):
        return bool(skip(name, module))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def linear_targets(model: torch.nn.Module, skip: SkipSpec) -> list:
    """(name, module) of every plain nn.Linear of model not matched by skip, in registration order."""
    return [(name, mod) for name, mod in model.named_modules()
            if type(mod) is torch.nn.Linear and not _skipped(skip, name, mod)]


def set_submodule(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def replace_linears(model: torch.nn.Module, make: Callable[[torch.nn.Linear], torch.nn.Module], skip: SkipSpec,
                    progress: Optional[bool], desc: str) -> torch.nn.Module:
    """Replaces (in place) every plain nn.Linear of model not matched by skip with make(linear); shows a
    tqdm bar when progress is True (None: when there are 16 or more layers). Returns model."""
    targets = linear_targets(model, skip)
    if progress is None:
        progress = len(targets) >= 16
    items = targets
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(targets, desc=desc, unit="layer")
    for name, linear in items:
        set_submodule(model, name, make(linear))
    return model
