"""fastops.so3: equivariant Clebsch-Gordan tensor products with e3nn 0.6's exact conventions.

    tp = so3.TensorProduct("128x0e+128x1o", "0e+1o+2e", irreps_out, instructions, shared_weights=False)
    z = tp(x1, x2, w)                     # == e3nn.o3.TensorProduct(...)(x1, x2, w)
    tp = so3.TensorProduct.from_e3nn(e3nn_tp)            # converts a module, weights included
    conv = so3.TensorProductConv(irreps_node, irreps_sh, irreps_out, instructions)
    m = conv(node_feats, edge_sh, edge_weights, senders, receivers)   # sum over edges, fused

A tensor product is compiled once into a plan (the nonzero Clebsch-Gordan coefficients of every path with
e3nn's normalization folded in) that the CPU and CUDA kernels run forward and backward. Every op is a torch
custom op with a fake implementation and autograd to any order (the product is trilinear: each
derivative is the same plan run forward or backward on other operands), so force training and
torch.compile(fullgraph=True) work.
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass
from math import sqrt
from typing import Dict, List, Optional, Tuple

import torch

from . import _C
from ._core import (call_c, check_device_usable, check_indices, check_tensor, contiguous_last_dim, cuda_stream,
                    custom_op, num_threads)
from ._so3_math import (Irrep, Irreps, angles_to_matrix, matrix_to_angles, rand_matrix, spherical_harmonics,
                        wigner_3j, wigner_D)

MODES = {"uvw": 0, "uvu": 1, "uuw": 2, "uuu": 3}
_PATH_FIELDS = 13
_MULTIPLICITY_FIELDS = slice(4, 7)  # mul1, mul2, mul_out of a path row (csrc/so3/so3.h PathField)
_REAL_DTYPES = (torch.float32, torch.float64)
_DTYPE_CODE = {torch.float32: 0, torch.float64: 1}


@dataclass(frozen=True)
class Instruction:
    """One path, as e3nn's Instruction: path_weight is the user's (under the square root of the
    normalization), path_shape the shape of its weight block."""
    i_in1: int
    i_in2: int
    i_out: int
    connection_mode: str
    has_weight: bool
    path_weight: float
    path_shape: tuple


def _path_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple:
    return {"uvw": (mul1, mul2, mul_out), "uvu": (mul1, mul2), "uuw": (mul1, mul_out), "uuu": (mul1,)}[mode]


def _fan_in(mode: str, mul1: int, mul2: int) -> int:
    return {"uvw": mul1 * mul2, "uvu": mul2, "uuw": mul1, "uuu": 1}[mode]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class TPPlan:
    """A compiled tensor product: irreps, instructions and the kernels' tables (csrc/so3/so3.h). Immutable;
    plans with equal arguments are shared."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization: str,
                 path_normalization: str):
        op = "so3.TensorProduct"
        self.irreps_in1, self.irreps_in2, self.irreps_out = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
        if irrep_normalization not in ("component", "norm", "none"):
            raise ValueError(f"{op}: irrep_normalization must be 'component', 'norm' or 'none'; got {irrep_normalization!r}")
        if path_normalization not in ("element", "path", "none"):
            raise ValueError(f"{op}: path_normalization must be 'element', 'path' or 'none'; got {path_normalization!r}")
        self.irrep_normalization, self.path_normalization = irrep_normalization, path_normalization
        r1, r2, ro = self.irreps_in1, self.irreps_in2, self.irreps_out
        parsed: List[Instruction] = []
        for n, ins in enumerate(instructions):
            ins = tuple(ins)
            if len(ins) not in (5, 6):
                raise ValueError(f"{op}: instruction {n} must be (i_in1, i_in2, i_out, mode, has_weight[, path_weight]); "
                                 f"got {ins!r}")
            i1, i2, io, mode, has_weight = ins[:5]
            path_weight = float(ins[5]) if len(ins) == 6 else 1.0
            for name, i, irreps in (("i_in1", i1, r1), ("i_in2", i2, r2), ("i_out", io, ro)):
                if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(irreps):
                    raise ValueError(f"{op}: instruction {n}: {name} = {i!r} is not an index of {irreps}")
            if mode not in MODES:
                raise ValueError(f"{op}: instruction {n}: mode {mode!r} is not supported "
                                 f"(supported: {', '.join(MODES)})")
            (m1, ir1), (m2, ir2), (mo, iro) = r1[i1], r2[i2], ro[io]
            if ir1.p * ir2.p != iro.p or not abs(ir1.l - ir2.l) <= iro.l <= ir1.l + ir2.l:
                raise ValueError(f"{op}: instruction {n}: {ir1} x {ir2} -> {iro} violates the selection rule")
            if mode == "uvu" and mo != m1:
                raise ValueError(f"{op}: instruction {n}: uvu needs the output multiplicity ({mo}) to equal in1's ({m1})")
            if mode in ("uuu", "uuw") and m2 != m1:
                raise ValueError(f"{op}: instruction {n}: {mode} needs equal input multiplicities, got {m1} and {m2}")
            if mode == "uuu" and mo != m1:
                raise ValueError(f"{op}: instruction {n}: uuu needs the output multiplicity ({mo}) to equal in1's ({m1})")
            if mode == "uvw" and not has_weight:
                raise ValueError(f"{op}: instruction {n}: uvw needs has_weight=True (as in e3nn)")
            if mode == "uuw" and not has_weight and mo != 1:
                raise ValueError(f"{op}: instruction {n}: uuw without weight needs output multiplicity 1, got {mo}")
            if path_weight < 0:
                raise ValueError(f"{op}: instruction {n}: path_weight must be >= 0, got {path_weight}")
            parsed.append(Instruction(i1, i2, io, mode, bool(has_weight), path_weight, _path_shape(mode, m1, m2, mo)))
        self.instructions = parsed

        s1, s2, so = r1.slices(), r2.slices(), ro.slices()
        rows, ijk, values = [], [], []
        weight_offset = 0
        self.weight_slices: List[Optional[slice]] = []
        for ins in parsed:
            (m1, ir1), (m2, ir2), (mo, iro) = r1[ins.i_in1], r2[ins.i_in2], ro[ins.i_out]
            a = {"component": iro.dim, "norm": ir1.dim * ir2.dim, "none": 1}[irrep_normalization]
            if path_normalization == "element":
                fan = sum(_fan_in(j.connection_mode, r1[j.i_in1].mul, r2[j.i_in2].mul)
                          for j in parsed if j.i_out == ins.i_out)
            elif path_normalization == "path":
                fan = _fan_in(ins.connection_mode, m1, m2) * sum(1 for j in parsed if j.i_out == ins.i_out)
            else:
                fan = 1
            alpha = sqrt((a / fan if fan > 0 else a) * ins.path_weight)
            w_off = -1
            if ins.has_weight:
                w_off = weight_offset
                weight_offset += _numel(ins.path_shape)
                self.weight_slices.append(slice(w_off, weight_offset))
            else:
                self.weight_slices.append(None)
            c = wigner_3j(ir1.l, ir2.l, iro.l)
            nz = (c.abs() > 1e-14).nonzero()
            begin = len(values)
            ijk.extend(nz.tolist())
            values.extend((alpha * c[tuple(nz.T)]).tolist())
            rows.append([MODES[ins.connection_mode], ir1.l, ir2.l, iro.l, m1, m2, mo, s1[ins.i_in1].start,
                         s2[ins.i_in2].start, so[ins.i_out].start, w_off, begin, len(values) - begin])
        self.weight_numel = weight_offset
        self.paths = torch.tensor(rows, dtype=torch.int64).reshape(-1, _PATH_FIELDS)
        self.cg_ijk = torch.tensor(ijk, dtype=torch.int32).reshape(-1, 3)
        self.cg_value = torch.tensor(values, dtype=torch.float64)
        self.has_weighted_path = any(i.has_weight for i in parsed)
        self._device_tables: Dict[torch.device, tuple] = {}
        self.weighted_part_id: Optional[int] = None  # set by _plan_id
        self.handle = self._make_handle()

    def _kernel_paths(self) -> torch.Tensor:
        """The paths the kernels run: those with no empty block (multiplicity 0, legal in e3nn). Such a path
        adds nothing and owns no weights, and its empty block shares an offset with the next block, which
        the kernels read as the same block."""
        return self.paths[(self.paths[:, _MULTIPLICITY_FIELDS] > 0).all(dim=1)].contiguous()

    def _make_handle(self):
        # The validated tables and the CPU kernels' compiled form, built once (csrc/bindings/so3.cpp).
        return _C.So3Plan(self._kernel_paths(), self.cg_ijk, self.cg_value, self.irreps_in1.dim,
                          self.irreps_in2.dim, self.irreps_out.dim, self.weight_numel)

    def weighted_part(self) -> "TPPlan":
        """The same plan without its unweighted paths (same normalization and weight layout): the part of
        the product that is linear in the weight, which the derivatives with respect to the weight need."""
        part = object.__new__(TPPlan)
        part.__dict__.update(self.__dict__)
        keep = [n for n, ins in enumerate(self.instructions) if ins.has_weight]
        part.instructions = [self.instructions[n] for n in keep]
        part.weight_slices = [self.weight_slices[n] for n in keep]
        part.paths = self.paths[keep].reshape(-1, _PATH_FIELDS).contiguous()
        part._device_tables = {}
        part.handle = part._make_handle()
        return part

    def device_tables(self, device: torch.device) -> tuple:
        """(paths, cg_ijk, cg_value) on a CUDA device, copied once."""
        if device not in self._device_tables:
            self._device_tables[device] = tuple(t.to(device) for t in (self._kernel_paths(), self.cg_ijk,
                                                                       self.cg_value))
        return self._device_tables[device]

    def flops_per_sample(self, backward: bool = False) -> int:
        """FLOPs per sample with OpenEquivariance's count (benchmark/metrics.py): forward = sum over paths
        of 3 nnz(C) mul1 mul2 + (2 l3 + 1) |weight block|; backward = 9 nnz(C) mul1 mul2 (mul2 = 1 for the
        uu modes)."""
        total = 0
        for ins, row in zip(self.instructions, self.paths.tolist()):
            nnz, m1, m2, l3 = row[12], row[4], row[5], row[3]
            pairs = m1 * (1 if ins.connection_mode in ("uuu", "uuw") else m2)
            if backward:
                total += 9 * nnz * pairs
            else:
                total += 3 * nnz * pairs + (2 * l3 + 1) * (_numel(ins.path_shape) if ins.has_weight else 0)
        return total


_PLANS: List[TPPlan] = []
_PLAN_IDS: Dict[tuple, int] = {}
# The plans' C++ handles must go before the extension module does (nanobind reports leaks otherwise).
atexit.register(_PLANS.clear)


def _plan_id(irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization, path_normalization) -> int:
    key = (str(Irreps(irreps_in1)), str(Irreps(irreps_in2)), str(Irreps(irreps_out)),
           tuple(tuple(i) for i in instructions), irrep_normalization, path_normalization)
    if key not in _PLAN_IDS:
        plan = TPPlan(irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization, path_normalization)
        _PLANS.append(plan)
        _PLAN_IDS[key] = plan.weighted_part_id = len(_PLANS) - 1
        if not all(i.has_weight for i in plan.instructions):
            _PLANS.append(plan.weighted_part())
            plan.weighted_part_id = _PLANS[-1].weighted_part_id = len(_PLANS) - 1
    return _PLAN_IDS[key]


def _run_forward(plan: TPPlan, x1, x2, weight, x1_index, out_index, out_order, out_rows, deterministic):
    x1, x2, weight = contiguous_last_dim(x1), contiguous_last_dim(x2), contiguous_last_dim(weight)
    out = torch.empty((out_rows, plan.irreps_out.dim), dtype=x1.dtype, device=x1.device)
    args = (plan.handle, x1, x2, weight, x1_index, out_index, out_order, out)
    if x1.device.type == "cuda":
        # The CPU binding checks its indices itself.
        check_indices("so3", (("x1_index", x1_index, x1.shape[0]), ("out_index", out_index, out_rows)))
        dp, dc, dv = plan.device_tables(x1.device)
        with torch.cuda.device(x1.device):
            call_c(_C.so3_forward, *args, device_paths=dp, device_cg_ijk=dc, device_cg_value=dv,
                   deterministic=deterministic, stream=cuda_stream(x1.device))
    else:
        call_c(_C.so3_forward, *args, nthreads=num_threads())
    return out


def _run_backward(plan: TPPlan, x1, x2, weight, x1_index, out_index, x1_order, grad_out, need_x1, need_x2, need_w,
                  deterministic):
    x1, x2, weight, grad_out = (contiguous_last_dim(t) for t in (x1, x2, weight, grad_out))
    gx1 = torch.empty_like(x1, memory_format=torch.contiguous_format) if need_x1 else None
    gx2 = torch.empty_like(x2, memory_format=torch.contiguous_format) if need_x2 else None
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_w and weight is not None else None
    args = (plan.handle, x1, x2, weight, x1_index, out_index, x1_order, grad_out, gx1, gx2, gw)
    if x1.device.type == "cuda":
        dp, dc, dv = plan.device_tables(x1.device)
        with torch.cuda.device(x1.device):
            nbytes = _C.so3_backward_cuda_workspace_bytes(x2.shape[0], plan.weight_numel,
                                                          weight is not None and weight.dim() == 1, deterministic,
                                                          _DTYPE_CODE[x1.dtype])
            workspace = torch.empty(nbytes, dtype=torch.uint8, device=x1.device) if nbytes else None
            call_c(_C.so3_backward, *args, device_paths=dp, device_cg_ijk=dc, device_cg_value=dv,
                   deterministic=deterministic, stream=cuda_stream(x1.device), workspace=workspace)
    else:
        call_c(_C.so3_backward, *args, nthreads=num_threads())
    # Distinct empty placeholders: custom-op outputs may not alias each other.
    return (gx1 if gx1 is not None else x1.new_empty(0), gx2 if gx2 is not None else x1.new_empty(0),
            gw if gw is not None else x1.new_empty(0))


# ---- custom ops -------------------------------------------------------------------------------------
# so3_tp: out[r] = sum over samples t with output row r (out_index[t], or t) of TP(x1[x1_index[t] or t],
# x2[t], weight[t] or weight). out_order sorts the samples by output row, x1_order by x1 row (for the
# deterministic reductions of the forward and of grad_x1).

@custom_op("fastops::so3_tp")
def _tp_op(x1: torch.Tensor, x2: torch.Tensor, weight: Optional[torch.Tensor], x1_index: Optional[torch.Tensor],
           out_index: Optional[torch.Tensor], out_order: Optional[torch.Tensor], x1_order: Optional[torch.Tensor],
           out_rows: int, plan_id: int, deterministic: bool) -> torch.Tensor:
    return _run_forward(_PLANS[plan_id], x1, x2, weight, x1_index, out_index, out_order, out_rows, deterministic)


@_tp_op.register_fake
def _(x1, x2, weight, x1_index, out_index, out_order, x1_order, out_rows, plan_id, deterministic):
    return x1.new_empty((out_rows, _PLANS[plan_id].irreps_out.dim))


@custom_op("fastops::so3_tp_backward")
def _tp_backward_op(x1: torch.Tensor, x2: torch.Tensor, weight: Optional[torch.Tensor],
                    x1_index: Optional[torch.Tensor], out_index: Optional[torch.Tensor],
                    out_order: Optional[torch.Tensor], x1_order: Optional[torch.Tensor], grad_out: torch.Tensor,
                    plan_id: int, need_x1: bool, need_x2: bool, need_weight: bool,
                    deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x1, grad_x2, grad_weight) of sum(grad_out * so3_tp(...)); the ones not needed are empty."""
    return _run_backward(_PLANS[plan_id], x1, x2, weight, x1_index, out_index, x1_order, grad_out,
                         need_x1, need_x2, need_weight, deterministic)


@_tp_backward_op.register_fake
def _(x1, x2, weight, x1_index, out_index, out_order, x1_order, grad_out, plan_id, need_x1, need_x2, need_weight,
      deterministic):
    return (torch.empty_like(x1) if need_x1 else x1.new_empty(0), torch.empty_like(x2) if need_x2 else x1.new_empty(0),
            torch.empty_like(weight) if need_weight and weight is not None else x1.new_empty(0))


def _tp_setup(ctx, inputs, output):
    x1, x2, weight, x1_index, out_index, out_order, x1_order, out_rows, plan_id, deterministic = inputs
    ctx.save_for_backward(x1, x2, weight, x1_index, out_index, out_order, x1_order)
    ctx.plan_id, ctx.deterministic = plan_id, deterministic


def _tp_backward(ctx, grad):
    x1, x2, weight, x1_index, out_index, out_order, x1_order = ctx.saved_tensors
    n1, n2, nw = ctx.needs_input_grad[:3]
    g1, g2, gw = _tp_backward_op(x1, x2, weight, x1_index, out_index, out_order, x1_order, grad, ctx.plan_id,
                                 n1, n2, nw and weight is not None, ctx.deterministic)
    return (g1 if n1 else None, g2 if n2 else None, gw if nw and weight is not None else None,
            None, None, None, None, None, None, None)


def _backward_setup(ctx, inputs, output):
    (x1, x2, weight, x1_index, out_index, out_order, x1_order, grad_out, plan_id, need_x1, need_x2, need_weight,
     deterministic) = inputs
    ctx.save_for_backward(x1, x2, weight, x1_index, out_index, out_order, x1_order, grad_out)
    ctx.plan_id, ctx.deterministic = plan_id, deterministic
    ctx.produced = (need_x1, need_x2, need_weight and weight is not None)


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


def _backward_backward(ctx, a1, a2, aw):
    """The product is bilinear in (x1, x2) and its weighted paths are linear in the weight, so the
    derivative of the backward against cotangents (a1, a2, aw) of (grad_x1, grad_x2, grad_weight) is made
    of the same two ops (Fw, Bw: the weighted paths only, as aw stands in for the weight):
      d grad_out = F(a1, x2, w) + F(x1, a2, w) + Fw(x1, x2, aw)
      d x1 = B1(a2, w, g) + Bw1(x2, aw, g),  d x2 = B2(a1, w, g) + Bw2(x1, aw, g),
      d w = B3(a1, x2, g) + B3(x1, a2, g)."""
    x1, x2, weight, x1_index, out_index, out_order, x1_order, g = ctx.saved_tensors
    pid, det = ctx.plan_id, ctx.deterministic
    a1 = a1 if ctx.produced[0] else None
    a2 = a2 if ctx.produced[1] else None
    aw = aw if ctx.produced[2] else None
    need_x1, need_x2, need_w, need_g = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                                        ctx.needs_input_grad[2] and weight is not None, ctx.needs_input_grad[7])
    rows = g.shape[0]

    pid_w = _PLANS[pid].weighted_part_id

    def fwd(p, q, r, plan=pid):
        return _tp_op(p, q, r, x1_index, out_index, out_order, x1_order, rows, plan, det)

    def bwd(p, q, r, n1, n2, nw, plan=pid):
        return _tp_backward_op(p, q, r, x1_index, out_index, out_order, x1_order, g, plan, n1, n2, nw, det)

    d_g = d_x1 = d_x2 = d_w = None
    if need_g:
        if a1 is not None:
            d_g = _add(d_g, fwd(a1, x2, weight))
        if a2 is not None:
            d_g = _add(d_g, fwd(x1, a2, weight))
        if aw is not None:
            d_g = _add(d_g, fwd(x1, x2, aw, pid_w))
    if (need_x1 and a2 is not None) or (need_x2 and a1 is not None):
        # one call with (a1, a2, w): B1(a2, w, g) and B2(a1, w, g)
        p = a1 if a1 is not None else x1
        q = a2 if a2 is not None else x2
        r1, r2, _ = bwd(p, q, weight, need_x1 and a2 is not None, need_x2 and a1 is not None, False)
        if need_x1 and a2 is not None:
            d_x1 = _add(d_x1, r1)
        if need_x2 and a1 is not None:
            d_x2 = _add(d_x2, r2)
    if aw is not None and (need_x1 or need_x2):
        r1, r2, _ = bwd(x1, x2, aw, need_x1, need_x2, False, pid_w)
        d_x1 = _add(d_x1, r1 if need_x1 else None)
        d_x2 = _add(d_x2, r2 if need_x2 else None)
    if need_w:
        if a1 is not None:
            d_w = _add(d_w, bwd(a1, x2, weight, False, False, True)[2])
        if a2 is not None:
            d_w = _add(d_w, bwd(x1, a2, weight, False, False, True)[2])
    return (d_x1, d_x2, d_w, None, None, None, None, d_g, None, None, None, None, None)


_tp_op.register_autograd(_tp_backward, setup_context=_tp_setup)
_tp_backward_op.register_autograd(_backward_backward, setup_context=_backward_setup)


# ---- modules ----------------------------------------------------------------------------------------

def _check_operand(op: str, name: str, t: torch.Tensor, dim: int, dtype: Optional[torch.dtype]) -> None:
    check_tensor(op, name, t)
    if t.dtype not in _REAL_DTYPES:
        raise TypeError(f"{op}: {name} must be float32 or float64; got {str(t.dtype).replace('torch.', '')}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{op}: {name} is {str(t.dtype).replace('torch.', '')} but x1 is "
                        f"{str(dtype).replace('torch.', '')}; pass operands of one dtype")
    if t.dim() < 1 or t.shape[-1] != dim:
        raise ValueError(f"{op}: {name} must have shape [..., {dim}]; got {list(t.shape)}")


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[N, dim] with a contiguous last dimension (a view when possible; the kernels read rows)."""
    return contiguous_last_dim(t.reshape(-1, dim))


def _sample_weights(weight: torch.Tensor) -> torch.Tensor:
    """Per-sample weights [N, weight_numel]; one broadcast row (row stride 0, e.g. expanded from [1, n]) goes in
    as the shared weight it is: the kernels read a zero row stride as shared, and autograd sums its gradient."""
    return weight[0] if weight.shape[0] > 1 and weight.stride(0) == 0 else weight


class _TPBase(torch.nn.Module):
    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization, path_normalization,
                 internal_weights, shared_weights):
        super().__init__()
        irrep_normalization = "component" if irrep_normalization is None else irrep_normalization
        path_normalization = "element" if path_normalization is None else path_normalization
        # The plan id indexes this process's registry; pickles carry the key and look the plan up again.
        self._plan_key = (str(Irreps(irreps_in1)), str(Irreps(irreps_in2)), str(Irreps(irreps_out)),
                          [tuple(i) for i in instructions], irrep_normalization, path_normalization)
        self._plan_id = _plan_id(*self._plan_key)
        plan = self.plan
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        if shared_weights is None:
            shared_weights = True
        if internal_weights is None:
            internal_weights = shared_weights and plan.has_weighted_path
        if internal_weights and not shared_weights:
            raise ValueError(f"{type(self).__name__}: internal_weights=True needs shared_weights=True")
        self.shared_weights, self.internal_weights = bool(shared_weights), bool(internal_weights)
        self.irreps_in1, self.irreps_in2, self.irreps_out = plan.irreps_in1, plan.irreps_in2, plan.irreps_out
        self.instructions = plan.instructions
        self.irrep_normalization, self.path_normalization = irrep_normalization, path_normalization
        self.weight_numel = plan.weight_numel
        self._dims = (plan.irreps_in1.dim, plan.irreps_in2.dim, plan.irreps_out.dim)  # plain ints for forward
        if self.internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))  # e3nn's initialization
        else:
            self.register_buffer("weight", torch.empty(0), persistent=False)

    @property
    def plan(self) -> TPPlan:
        return _PLANS[self._plan_id]

    def __setstate__(self, state):
        super().__setstate__(state)
        self._plan_id = _plan_id(*self._plan_key)

    def _weight(self, op: str, weight, dtype) -> Optional[torch.Tensor]:
        if not self.plan.has_weighted_path:
            if weight is not None and weight.numel() != 0:
                raise ValueError(f"{op}: this tensor product has no weights; got a weight")
            return None
        if weight is None:
            if not self.internal_weights:
                raise ValueError(f"{op}: weight is required (internal_weights=False)")
            weight = self.weight
        _check_operand(op, "weight", weight, self.weight_numel, dtype)
        if self.shared_weights and weight.dim() != 1:
            raise ValueError(f"{op}: shared_weights=True needs weight of shape [{self.weight_numel}]; "
                             f"got {list(weight.shape)}")
        if not self.shared_weights and weight.dim() < 2:
            raise ValueError(f"{op}: shared_weights=False needs weight of shape [..., {self.weight_numel}]; "
                             f"got {list(weight.shape)}")
        return weight

    def weight_view_for_instruction(self, instruction: int, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weight block of one instruction, shaped [..., *path_shape] (e3nn's method)."""
        w = self.weight if weight is None else weight
        sl = self.plan.weight_slices[instruction]
        if sl is None:
            raise ValueError(f"instruction {instruction} has no weight")
        return w[..., sl].reshape(w.shape[:-1] + self.instructions[instruction].path_shape)

    def flops_per_sample(self, backward: bool = False) -> int:
        return self.plan.flops_per_sample(backward)

    def extra_repr(self) -> str:
        return (f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out} | {len(self.instructions)} paths | "
                f"{self.weight_numel} weights")


class TensorProduct(_TPBase):
    """e3nn.o3.TensorProduct with the same arguments, instructions, weight order and results:
    out = tp(x1[..., irreps_in1.dim], x2[..., irreps_in2.dim], weight) with weight [weight_numel]
    (shared_weights) or [..., weight_numel]; leading dimensions broadcast (broadcast operands are
    materialized). Modes uvw, uvu, uuw, uuu; float32 and float64 on CPU and CUDA."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization: Optional[str] = None,
                 path_normalization: Optional[str] = None, internal_weights: Optional[bool] = None,
                 shared_weights: Optional[bool] = None):
        super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization, path_normalization,
                         internal_weights, shared_weights)

    @classmethod
    def from_e3nn(cls, tp) -> "TensorProduct":
        """Converts an e3nn.o3.TensorProduct (or a subclass such as FullyConnectedTensorProduct): same
        irreps, paths, normalization and weights (copied)."""
        # e3nn keeps each path's final coefficient in Instruction.path_weight (normalization folded in).
        instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, float(i.path_weight) ** 2)
                        for i in tp.instructions]
        out = cls(str(tp.irreps_in1), str(tp.irreps_in2), str(tp.irreps_out), instructions, irrep_normalization="none",
                  path_normalization="none", internal_weights=tp.internal_weights, shared_weights=tp.shared_weights)
        if tp.internal_weights and tp.weight_numel > 0:
            with torch.no_grad():
                out.weight = torch.nn.Parameter(tp.weight.detach().clone())
        return out

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        op = "so3.TensorProduct"
        d1, d2, dout = self._dims
        _check_operand(op, "x1", x1, d1, None)
        _check_operand(op, "x2", x2, d2, x1.dtype)
        check_device_usable(op, x1)
        weight = self._weight(op, weight, x1.dtype)
        for name, t in (("x2", x2), ("weight", weight)):
            if t is not None and t.device != x1.device:
                raise ValueError(f"{op}: {name} is on {t.device} but x1 is on {x1.device}")
        lead = [x1.shape[:-1], x2.shape[:-1]]
        if weight is not None and not self.shared_weights:
            lead.append(weight.shape[:-1])
        try:
            shape = torch.broadcast_shapes(*lead)
        except RuntimeError:
            raise ValueError(f"{op}: the leading dimensions of x1 {list(x1.shape)}, x2 {list(x2.shape)}"
                             + ("" if len(lead) == 2 else f" and weight {list(weight.shape)}") + " do not broadcast")
        a = _rows(x1.expand(*shape, x1.shape[-1]), d1)
        b = _rows(x2.expand(*shape, x2.shape[-1]), d2)
        if weight is not None and not self.shared_weights:
            weight = _sample_weights(_rows(weight.expand(*shape, weight.shape[-1]), self.weight_numel))
        elif weight is not None:
            weight = weight.contiguous() if weight.stride(-1) != 1 else weight
        out = _tp_op(a, b, weight, None, None, None, None, a.shape[0], self._plan_id, True)
        return out.reshape(*shape, dout)


class TensorProductConv(_TPBase):
    """The fused message-passing tensor product of MACE / NequIP:
        out[i] = sum over edges e with receivers[e] == i of TP(x[senders[e]], edge_attr[e], edge_weight[e])
    for node features x [num_nodes, irreps_in1.dim], edge attributes [E, irreps_in2.dim] (e.g. spherical
    harmonics) and per-edge weights [E, weight_numel] (shared_weights=False, the default) or [weight_numel].
    The [E, irreps_out.dim] messages are never materialized. deterministic=True (default) sums each node's
    edges in a fixed order (receivers sorted, a segmented reduction; on the CPU always); False lets CUDA
    use atomics. The sorts cost O(E log E) per call: pass receiver_order / sender_order (edge_orders())
    to reuse them across layers."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization: Optional[str] = None,
                 path_normalization: Optional[str] = None, internal_weights: Optional[bool] = None,
                 shared_weights: Optional[bool] = False, deterministic: bool = True):
        super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization, path_normalization,
                         internal_weights, shared_weights)
        self.deterministic = bool(deterministic)

    def forward(self, x: torch.Tensor, edge_attr: torch.Tensor, edge_weight: Optional[torch.Tensor],
                senders: torch.Tensor, receivers: torch.Tensor, num_nodes: Optional[int] = None,
                receiver_order: Optional[torch.Tensor] = None,
                sender_order: Optional[torch.Tensor] = None) -> torch.Tensor:
        op = "so3.TensorProductConv"
        d1, d2, _ = self._dims
        _check_operand(op, "x", x, d1, None)
        _check_operand(op, "edge_attr", edge_attr, d2, x.dtype)
        check_device_usable(op, x)
        if x.dim() != 2 or edge_attr.dim() != 2:
            raise ValueError(f"{op}: x must be [num_nodes, {d1}] and edge_attr "
                             f"[num_edges, {d2}]; got {list(x.shape)} and {list(edge_attr.shape)}")
        edges = edge_attr.shape[0]
        weight = self._weight(op, edge_weight, x.dtype)
        if weight is not None and not self.shared_weights and list(weight.shape) != [edges, self.weight_numel]:
            raise ValueError(f"{op}: edge_weight must have shape [{edges}, {self.weight_numel}]; got {list(weight.shape)}")
        num_nodes = x.shape[0] if num_nodes is None else num_nodes
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
            raise ValueError(f"{op}: num_nodes must be an int >= 0; got {num_nodes!r}")
        for name, idx in (("senders", senders), ("receivers", receivers), ("receiver_order", receiver_order),
                          ("sender_order", sender_order)):
            if idx is None:
                continue
            check_tensor(op, name, idx)
            if idx.dtype != torch.int64:
                raise TypeError(f"{op}: {name} must be int64; got {str(idx.dtype).replace('torch.', '')}")
            if idx.shape != (edges,):
                raise ValueError(f"{op}: {name} must have shape [{edges}] (one per edge); got {list(idx.shape)}")
        for name, t in (("edge_attr", edge_attr), ("edge_weight", weight), ("senders", senders),
                        ("receivers", receivers), ("receiver_order", receiver_order), ("sender_order", sender_order)):
            if t is not None and t.device != x.device:
                raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
        if x.device.type == "cuda":  # the CPU binding checks the orders itself
            check_indices(op, (("receiver_order", receiver_order, edges, receivers),
                               ("sender_order", sender_order, edges, senders)))
        if receiver_order is None or sender_order is None:
            r_order, s_order = edge_orders(senders, receivers)
            receiver_order = r_order if receiver_order is None else receiver_order
            sender_order = s_order if sender_order is None else sender_order
        a, b = _rows(x, d1), _rows(edge_attr, d2)
        if weight is not None:
            weight = _sample_weights(_rows(weight, self.weight_numel)) if weight.dim() == 2 else weight.contiguous()
        return _tp_op(a, b, weight, senders.contiguous(), receivers.contiguous(), receiver_order.contiguous(),
                      sender_order.contiguous(), num_nodes, self._plan_id, self.deterministic)


def edge_orders(senders: torch.Tensor, receivers: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(receiver_order, sender_order): the edges stably sorted by receiver and by sender, as
    TensorProductConv uses them (compute once per graph, reuse across layers)."""
    return (torch.sort(receivers, stable=True).indices, torch.sort(senders, stable=True).indices)


# ---- the usual problems ---------------------------------------------------------------------------------

def fully_connected_instructions(irreps_in1, irreps_in2, irreps_out) -> List[tuple]:
    """e3nn FullyConnectedTensorProduct's paths: every (i1, i2, i_out) the selection rule allows, uvw, weighted."""
    r1, r2, ro = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
    return [(i1, i2, io, "uvw", True)
            for i1, (_, ir1) in enumerate(r1) for i2, (_, ir2) in enumerate(r2) for io, (_, iro) in enumerate(ro)
            if iro in list(ir1 * ir2)]


def fully_connected_tp(irreps_in1, irreps_in2, irreps_out, **kwargs) -> TensorProduct:
    """The equivalent of e3nn.o3.FullyConnectedTensorProduct (same paths, weight order and results)."""
    return TensorProduct(irreps_in1, irreps_in2, irreps_out,
                         fully_connected_instructions(irreps_in1, irreps_in2, irreps_out), **kwargs)


def channelwise_instructions(irreps_in1, irreps_in2, target_irreps) -> Tuple[Irreps, List[tuple]]:
    """MACE's tp_out_irreps_with_instructions: one uvu path (and one output block of in1's multiplicity)
    per allowed (in1, in2, l_out) with l_out in target_irreps; outputs sorted. Returns (irreps_out, instructions)."""
    r1, r2, target = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(target_irreps)
    target_irs = [ir for _, ir in target]
    out_list, instructions = [], []
    for i, (mul, ir_in) in enumerate(r1):
        for j, (_, ir_edge) in enumerate(r2):
            for ir_out in ir_in * ir_edge:
                if ir_out in target_irs:
                    instructions.append((i, j, len(out_list), "uvu", True))
                    out_list.append((mul, ir_out))
    irreps_out, perm, _ = Irreps(out_list).sort()
    return irreps_out, [(i1, i2, perm[io], mode, w) for i1, i2, io, mode, w in instructions]


def channelwise_tp(irreps_in1, irreps_in2, target_irreps, conv: bool = False, **kwargs):
    """MACE's channelwise (uvu) tensor product with per-sample weights by default: a TensorProduct, or a
    TensorProductConv with conv=True."""
    irreps_out, instructions = channelwise_instructions(irreps_in1, irreps_in2, target_irreps)
    kwargs.setdefault("shared_weights", False)
    kwargs.setdefault("internal_weights", False)
    return (TensorProductConv if conv else TensorProduct)(irreps_in1, irreps_in2, irreps_out, instructions, **kwargs)


def elementwise_tp(irreps_in1, irreps_in2, filter_ir_out=None, **kwargs) -> TensorProduct:
    """The equivalent of e3nn.o3.ElementwiseTensorProduct: channel u of in1 times channel u of in2 (uuu,
    no weights) into every allowed output irrep (or those in filter_ir_out)."""
    r1, r2 = Irreps(irreps_in1).simplify(), Irreps(irreps_in2).simplify()
    if r1.num_irreps != r2.num_irreps:
        raise ValueError(f"elementwise_tp: the inputs must have as many irreps; {r1} has {r1.num_irreps}, "
                         f"{r2} has {r2.num_irreps}")
    filters = None if filter_ir_out is None else [Irrep(ir) for ir in filter_ir_out]
    # Split blocks until both lists have the same multiplicities, in order.
    a, b = [list(x) for x in r1], [list(x) for x in r2]
    i = 0
    while i < len(a):
        (m1, ir1), (m2, ir2) = a[i], b[i]
        if m1 < m2:
            b[i] = [m1, ir2]
            b.insert(i + 1, [m2 - m1, ir2])
        elif m2 < m1:
            a[i] = [m2, ir1]
            a.insert(i + 1, [m1 - m2, ir1])
        i += 1
    out, instructions = [], []
    for i, ((mul, ir1), (_, ir2)) in enumerate(zip(a, b)):
        for ir in ir1 * ir2:
            if filters is not None and ir not in filters:
                continue
            instructions.append((i, i, len(out), "uuu", False))
            out.append((mul, ir))
    return TensorProduct(Irreps([tuple(x) for x in a]), Irreps([tuple(x) for x in b]), Irreps(out), instructions,
                         **kwargs)


def cpu_kernel_name() -> str:
    """The CPU kernel set in use: 'avx512', 'avx2' or 'scalar' (fastops.set_cpu_isa lowers it)."""
    return _C.so3_cpu_kernel_name()


from ._so3_gaunt import (CPTensorProduct, CPTensorProductConv, GauntTensorProduct, cp_reference_tensor,  # noqa: E402
                         default_rank, fit_cp, from_s2grid, gaunt, gaunt_cpu_kernel_name, s2grid, s2grid_resolution,
                         to_s2grid)

__all__ = ["CPTensorProduct", "CPTensorProductConv", "GauntTensorProduct", "cp_reference_tensor", "default_rank",
           "fit_cp", "from_s2grid", "gaunt", "gaunt_cpu_kernel_name", "s2grid", "s2grid_resolution", "to_s2grid",
           "Irrep", "Irreps", "Instruction", "TPPlan", "TensorProduct", "TensorProductConv", "angles_to_matrix",
           "channelwise_instructions", "channelwise_tp", "cpu_kernel_name", "edge_orders", "elementwise_tp",
           "fully_connected_instructions", "fully_connected_tp", "matrix_to_angles", "rand_matrix",
           "spherical_harmonics", "wigner_3j", "wigner_D", "MODES"]
