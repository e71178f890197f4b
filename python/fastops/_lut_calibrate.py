"""Calibration-aware quantization for fastops.lut: GPTQ, AWQ and HQQ, and the sequential whole-model driver.

Every method produces an ordinary LutWeight in the natural column order, so lut_gemm, LutLinear and
save/load are unchanged:
  gptq  second-order error compensation (Frantar et al. 2022): columns are quantized one at a time (in
        order of decreasing Hessian diagonal with act_order) and each rounding error is spread over the
        columns not yet quantized through the upper Cholesky factor of H^-1, H = X^T X of the layer inputs.
        Groups stay the natural k // group_size groups: a group's parameters are fitted, by the scheme's
        own quantizer, to the group's current (already compensated) weights when its first column comes
        up. So act-order needs no stored permutation and no runtime gather of x.
  awq   activation-aware scaling (Lin et al. 2023): W diag(s) is quantized and x diag(1/s) multiplied,
        s = mean|x|^alpha with alpha picked on a grid to minimize the layer's output error on the
        calibration inputs, tr(dW H dW^T). 1/s is folded into the preceding norm where the model's output
        provably does not change (checked on a calibration batch), otherwise into LutLinear.input_scale.
  hqq   half-quadratic zero-point optimization (Badri & Shaji 2023), data free: the float zero point of
        each group minimizes the l_p (p < 1) norm of the weight error by alternating a generalized
        soft-threshold of the error with a closed-form zero-point update.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable

import torch

from ._core import (
    FLOAT_DTYPES,
    check_dtype,
    check_finite,
    check_same_device,
    check_shape,
    set_submodule,
)
from .lut import (
    _KERNEL_SCHEME,
    _QUANTIZERS,
    LutWeight,
    _assemble,
    _bcq_assign,
    _bcq_signs,
    _check_quantize_args,
    _dequantize_codes,
    _quantize_groups,
    _to_fp16_values,
)

__all__ = ["CALIBRATED_METHODS", "METHODS", "gptq_quantize", "hqq_quantize"]

METHODS = ("rtn", "gptq", "awq", "hqq", "awq+gptq")
CALIBRATED_METHODS = ("gptq", "awq", "awq+gptq")  # the methods that take calibration data


def _max_code(bits: int, scheme: str) -> int:
    return 2 if scheme == "ternary" else (1 << bits) - 1


# ---------------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------------
def _nearest_codes(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, scheme: str):
    """Codes [M, n] of weights w[M, n] of one group against its parameters (scales [M, A], zeros [M]) and
    the value each code stands for."""
    if scheme == "bcq":
        theta = torch.cat([scales, zeros[:, None]], dim=1).to(torch.float32)
        signs = _bcq_signs(bits, w.device)
        codes = _bcq_assign(w.to(torch.float32)[:, None, :], theta[:, None, :], signs)[:, 0, :]
        levels = theta @ signs.t()  # [M, 2^bits]
        return codes, levels.gather(1, codes).to(w.dtype)
    s, z = scales[:, :1].to(w.dtype), zeros[:, None].to(w.dtype)
    codes = torch.round(w / s + z).clamp(0, _max_code(bits, scheme))
    return codes.to(torch.int64), s * (codes - z)


# Range shrink factors tried when fitting a group: clipping a few outliers often rounds the rest better.
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


def _fit_group(w: torch.Tensor, h_block: torch.Tensor | None, bits: int, scheme: str, bcq_iters: int):
    """The scheme's parameters (scales [M, A], zeros [M]) of one group w[M, g]. With h_block (the group's
    [g, g] block of the input Hessian) each row also tries its range clipped by _CLIP_RATIOS and keeps the
    fit with the smallest output error dw H dw^T (AWQ's clip search, on the statistics)."""
    quantizer = _QUANTIZERS[scheme]
    if scheme == "bcq":  # its least-squares fit runs in float32; the uniform fits keep float64 (one rounding to fp16)
        w = w.to(torch.float32)
    _, scales, zeros = quantizer(w[:, None, :], bits, bcq_iters=bcq_iters)
    scales, zeros = scales[:, 0], zeros[:, 0]
    if h_block is None:
        return scales, zeros
    h_block = h_block.to(w.dtype)

    def error(scales, zeros):
        d = w - _nearest_codes(w, scales, zeros, bits, scheme)[1]
        return ((d @ h_block) * d).sum(dim=1)

    best = error(scales, zeros)
    lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    for ratio in _CLIP_RATIOS[1:]:
        _, s, z = quantizer(torch.minimum(torch.maximum(w, lo * ratio), hi * ratio)[:, None, :], bits,
                            bcq_iters=bcq_iters)
        s, z = s[:, 0], z[:, 0]
        err = error(s, z)
        better = err < best
        scales, zeros, best = (torch.where(better[:, None], s, scales), torch.where(better, z, zeros),
                               torch.where(better, err, best))
    return scales, zeros


def _inverse_hessian_factor(hessian: torch.Tensor, damp: float, op: str) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, H^-1 = U^T U."""
    h = hessian + damp * float(hessian.diagonal().mean()) * torch.eye(hessian.shape[0], dtype=hessian.dtype,
                                                                        device=hessian.device)
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info):
        raise ValueError(f"{op}: hessian + damp * mean(diag) * I is not positive definite; increase damp "
                         f"(got damp={damp})")
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int | None = 128,
                  scheme: str = "asym", *, act_order: bool = True, damp: float = 0.01, clip: bool = True,
                  block_size: int = 128, bcq_iters: int = 10) -> LutWeight:
    """GPTQ: quantize w[M, K] minimizing the output error tr(dW H dW^T) for the layer-input Hessian
    H = X^T X [K, K] (any positive scaling; see fastops.lut.quantize_model for collecting it).

    act_order: quantize columns in order of decreasing diag(H) (the result keeps the natural layout).
    damp: added to diag(H) as a fraction of its mean. clip: fit each group's range also clipped (to 0.6-0.95
    of min-max) and keep, per row, the fit with the smallest output error on the group's block of H. block_size: columns per lazy-update block (speed
    only). Computes in float64 when w or hessian is float64, else float32. Other arguments as in
    fastops.lut.quantize; every scheme is supported.
    """
    op = "lut.gptq_quantize"
    group_size = _check_quantize_args(op, w, bits, group_size, scheme)
    m, k = w.shape
    check_dtype(op, "hessian", hessian, FLOAT_DTYPES + (torch.float64,))
    check_shape(op, "hessian", hessian, (k, k))
    check_same_device(op, "w", w, hessian=hessian)
    check_finite(op, "hessian", hessian)
    if not isinstance(act_order, bool):
        raise TypeError(f"{op}: act_order must be a bool, got {type(act_order).__name__}")
    if not (isinstance(damp, (int, float)) and 0 <= damp < math.inf):
        raise ValueError(f"{op}: damp must be a non-negative number, got {damp!r}")
    if not isinstance(clip, bool):
        raise TypeError(f"{op}: clip must be a bool, got {type(clip).__name__}")
    if not (isinstance(block_size, int) and block_size >= 1):
        raise ValueError(f"{op}: block_size must be a positive int, got {block_size!r}")

    work = torch.float64 if torch.float64 in (w.dtype, hessian.dtype) else torch.float32
    h = hessian.to(work).clone()
    diag = h.diagonal()
    if float(diag.min()) < 0:
        raise ValueError(f"{op}: hessian has negative diagonal entries; it must be X^T X of layer inputs")
    diag[diag == 0] = 1  # inputs never seen: that column is rounded to nearest, with no cross terms
    perm = (torch.argsort(diag, descending=True, stable=True) if act_order
            else torch.arange(k, device=w.device))
    u = _inverse_hessian_factor(h[perm][:, perm], float(damp), op)
    weight = w.to(work)[:, perm].clone()  # permuted: column j is input feature perm[j]
    position = torch.empty_like(perm)
    position[perm] = torch.arange(k, device=w.device)

    groups = -(-k // group_size)
    alphas = bits if scheme == "bcq" else 1
    scales = torch.zeros(m, groups, alphas, dtype=torch.float32, device=w.device)
    zeros = torch.zeros(m, groups, dtype=torch.float32, device=w.device)
    fitted = [False] * groups
    group_of = (perm // group_size).tolist()
    codes = torch.empty(m, k, dtype=torch.int64, device=w.device)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        block = weight[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        for j in range(i2 - i1):
            g = group_of[i1 + j]
            if not fitted[g]:
                # The group's weights as compensated so far: the block's updates up to column j are still
                # pending for the columns at or past i1 (weight holds their values as of the block start).
                members = slice(g * group_size, min((g + 1) * group_size, k))  # natural column indices
                cols = position[members]
                current = weight[:, cols] - errors[:, :j] @ u[i1:i1 + j, cols]
                scales[:, g], zeros[:, g] = _fit_group(current, h[members, members] if clip else None, bits,
                                                       scheme, bcq_iters)
                fitted[g] = True
            column = block[:, j]
            q, value = _nearest_codes(column[:, None], scales[:, g], zeros[:, g], bits, scheme)
            codes[:, i1 + j] = q[:, 0]
            err = (column - value[:, 0]) / u[i1 + j, i1 + j]
            block[:, j:] -= err[:, None] * u[i1 + j, i1 + j:i2][None, :]
            errors[:, j] = err
        weight[:, i2:] -= errors @ u[i1:i2, i2:]
    natural = torch.empty_like(codes)
    natural[:, perm] = codes
    return _assemble(natural.to(torch.uint8), scales, zeros, m, k, bits, group_size, scheme)


# ---------------------------------------------------------------------------------------------------
# HQQ
# ---------------------------------------------------------------------------------------------------
def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Proximal step of |x|^p / beta (p < 1): sign(x) * max(|x| - |x|^(p-1) / beta, 0)."""
    magnitude = x.abs()
    return torch.sign(x) * torch.relu(magnitude - magnitude.clamp(min=1e-12).pow(p - 1) / beta)


def _quantize_hqq(w3: torch.Tensor, bits: int, *, iters: int, p: float, beta: float, kappa: float, **_):
    maxq = (1 << bits) - 1
    _, s, z = _QUANTIZERS["asym"](w3, bits)  # start from round-to-nearest (min-max, or 1-bit's two means)
    z = z[..., None]

    def error_of(z):
        q = torch.round(w3 / s + z).clamp(0, maxq)
        return q, (w3 - s * (q - z)).abs().mean(dim=-1, keepdim=True)

    q, best_err = error_of(z)
    best_z = z
    for _ in range(iters):
        w_err = _shrink_lp(w3 - s * (q - z), beta, p)
        z = (q - (w3 - w_err) / s).mean(dim=-1, keepdim=True)
        q, err = error_of(z)
        better = err < best_err
        best_z, best_err = torch.where(better, z, best_z), torch.where(better, err, best_err)
        beta *= kappa
    z = _to_fp16_values(best_z)  # codes are taken against the stored (float16) zero point
    q = torch.round(w3 / s + z).clamp(0, maxq)
    return q.to(torch.uint8), s, z[..., 0]


def hqq_quantize(w: torch.Tensor, bits: int, group_size: int | None = 128, *, iters: int = 20,
                 p: float = 0.7, beta: float = 10.0, kappa: float = 1.01) -> LutWeight:
    """HQQ: data-free asymmetric quantization whose per-group float zero points minimize the l_p norm
    (p < 1, robust to outliers) of the weight error; scales are round-to-nearest's. The zero point with the
    smallest mean |w - w_hat| seen (round-to-nearest's included) is kept. Returns an "asym" LutWeight.

    iters: half-quadratic rounds (the best zero point seen is kept); beta, kappa: the penalty and its
    growth per round.
    """
    op = "lut.hqq_quantize"
    group_size = _check_quantize_args(op, w, bits, group_size, "asym")
    if not (isinstance(iters, int) and iters >= 0):
        raise ValueError(f"{op}: iters must be a non-negative int, got {iters!r}")
    if not 0 < p < 1:
        raise ValueError(f"{op}: p must lie in (0, 1), got {p!r}")
    if not (beta > 0 and kappa >= 1):
        raise ValueError(f"{op}: beta must be > 0 and kappa >= 1, got beta={beta!r}, kappa={kappa!r}")
    m, k = w.shape
    codes, scales, zeros = _quantize_groups(w, bits, group_size, _quantize_hqq, iters=iters, p=p, beta=beta,
                                            kappa=kappa)
    return _assemble(codes, scales, zeros, m, k, bits, group_size, "asym")


# ---------------------------------------------------------------------------------------------------
# AWQ
# ---------------------------------------------------------------------------------------------------
def _output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """Sum over rows of dW H dW^T: the squared output error summed over the calibration tokens."""
    d = w - w_hat
    return float(((d @ hessian) * d).sum())


def _fake_quantize(w: torch.Tensor, bits: int, group_size: int, scheme: str, bcq_iters: int) -> torch.Tensor:
    codes, scales, zeros = _quantize_groups(w, bits, group_size, _QUANTIZERS[scheme], bcq_iters=bcq_iters)
    return _dequantize_codes(codes, scales, zeros, bits, group_size, _KERNEL_SCHEME[scheme])


def _quantize_clipped(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, scheme: str,
                      bcq_iters: int) -> LutWeight:
    """Round to nearest with each group's range clip searched against its block of the input Hessian."""
    m, k = w.shape
    groups = -(-k // group_size)
    scales = torch.zeros(m, groups, bits if scheme == "bcq" else 1, dtype=torch.float32, device=w.device)
    zeros = torch.zeros(m, groups, dtype=torch.float32, device=w.device)
    codes = torch.empty(m, k, dtype=torch.int64, device=w.device)
    for g in range(groups):
        members = slice(g * group_size, min((g + 1) * group_size, k))
        scales[:, g], zeros[:, g] = _fit_group(w[:, members], hessian[members, members], bits, scheme, bcq_iters)
        codes[:, members] = _nearest_codes(w[:, members], scales[:, g], zeros[:, g], bits, scheme)[0]
    return _assemble(codes.to(torch.uint8), scales, zeros, m, k, bits, group_size, scheme)


def _awq_scale(weights: list, hessian: torch.Tensor, act_absmean: torch.Tensor, bits: int, group_size: int,
               scheme: str, bcq_iters: int, grid: int = 20) -> torch.Tensor:
    """The per-input-channel scale s [K] (W diag(s) is quantized, x diag(1/s) multiplied) minimizing the
    summed output error of every linear sharing this input; alpha = 0 (s = 1, plain rounding) is a candidate."""
    base = act_absmean.clamp(min=1e-6 * float(act_absmean.max()) + 1e-30)
    best, best_err = torch.ones_like(base), math.inf
    for alpha in torch.linspace(0, 1, grid + 1).tolist():
        s = base.pow(alpha)
        s = _to_fp16_values(s / torch.sqrt(s.max() * s.min()))
        err = sum(_output_error(w, _fake_quantize(w * s, bits, group_size, scheme, bcq_iters) / s, hessian)
                  for w in weights)
        if err < best_err:
            best, best_err = s, err
    return best


# ---------------------------------------------------------------------------------------------------
# The sequential whole-model driver
# ---------------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by a hook once the current stage's inputs are captured: the rest of the forward is not needed."""


class _InputStats:
    """Running X^T X and sum |x| of one layer input (memory: one [K, K] matrix), and with a float reference
    input X_f of the same tokens also X_f^T X (one more)."""

    def __init__(self, k: int, device, cross: bool = False):
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        self.gram = torch.zeros(k, k, dtype=dtype, device=device)
        self.cross = torch.zeros(k, k, dtype=dtype, device=device) if cross else None
        self.abs_sum = torch.zeros(k, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor, x_float: torch.Tensor | None = None) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        self.gram += (x2.t() @ x2).to(self.gram.dtype)
        if self.cross is not None:
            self.cross += (x_float.detach().reshape(-1, x.shape[-1]).to(torch.float32).t() @ x2).to(self.gram.dtype)
        self.abs_sum += x2.abs().sum(dim=0).to(torch.float64)
        self.tokens += x2.shape[0]

    def hessian(self) -> torch.Tensor:
        return (self.gram / max(self.tokens, 1)).to(torch.float32)

    def absmean(self) -> torch.Tensor:
        return (self.abs_sum / max(self.tokens, 1)).to(torch.float32)


def _tensors_of(obj) -> list:
    """Every tensor in a (nested) model input or output, in a deterministic order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for key in obj for t in _tensors_of(obj[key])]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors_of(item)]
    return []


def _run(model: torch.nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _run_checked(model, batch, index: int, op: str):
    try:
        return _run(model, batch)
    except _StopForward:
        raise
    except Exception as e:  # the model's own error, reported as what it is: a bad calibration batch
        raise ValueError(f"{op}: calibration batch {index} could not be run through the model: "
                         f"{type(e).__name__}: {e}") from e


def _calibration_batches(calibration, model: torch.nn.Module, op: str) -> list:
    if isinstance(calibration, (torch.Tensor, dict)):
        calibration = [calibration]  # one batch
    try:
        batches = list(calibration)
    except TypeError:
        raise TypeError(f"{op}: calibration must be an iterable of model inputs (batches), got "
                        f"{type(calibration).__name__}") from None
    if not batches:
        raise ValueError(f"{op}: calibration is empty; pass at least one batch of model inputs")
    device = next((p.device for p in model.parameters()), None)
    for i, batch in enumerate(batches):
        tensors = _tensors_of(batch)
        if not tensors:
            raise TypeError(f"{op}: calibration batch {i} holds no tensors (got {type(batch).__name__})")
        for t in tensors:
            if device is not None and t.device != device:
                raise ValueError(f"{op}: calibration batch {i} has a tensor on {t.device}, but the model is on "
                                 f"{device}; move the calibration data to the model's device")
    return batches


def _is_norm(module: torch.nn.Module, k: int) -> bool:
    """An elementwise-affine normalization whose output is weight * normalized(x) (+ bias) over k features."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    return ("norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.shape == (k,)
            and (bias is None or (isinstance(bias, torch.Tensor) and bias.shape == (k,))))


def _trace_stages(model, targets: dict, batch, op: str):
    """One forward: the linears in order of first call, grouped by the very input tensor they receive
    (q/k/v share one), each group with the module whose output that tensor is, and call counts."""
    order, inputs, calls, producer = [], {}, {}, {}
    names = {id(mod): name for name, mod in model.named_modules()}
    handles = []

    def pre_hook(mod, args):
        name = names[id(mod)]
        calls[name] = calls.get(name, 0) + 1
        if name not in inputs:
            order.append(name)
            inputs[name] = args[0]

    def post_hook(mod, args, out):
        if isinstance(out, torch.Tensor):
            producer.setdefault(id(out), (names[id(mod)], mod, out))  # inner modules run their hooks first

    for name, mod in targets.items():
        handles.append(mod.register_forward_pre_hook(pre_hook))
    for mod in model.modules():
        handles.append(mod.register_forward_hook(post_hook))
    try:
        _run_checked(model, batch, 0, op)
    finally:
        for h in handles:
            h.remove()
    stages = []
    for name in order:
        x = inputs[name]
        for stage in stages:
            if stage["input"] is x:
                stage["names"].append(name)
                break
        else:
            source = producer.get(id(x))
            stages.append({"input": x, "names": [name],
                           "source": source[1] if source is not None and source[2] is x else None})
    for stage in stages:
        stage["repeated"] = any(calls[n] > 1 for n in stage["names"])
        del stage["input"]
    return stages


def _capture(model, linears: list, batch, index: int, stop_early: bool, op: str) -> list:
    """The inputs of linears[0] (all of linears share them) on one batch, one per call."""
    captured, seen = [], set()

    def hook(mod, args):
        if mod is linears[0]:
            captured.append(args[0])
        seen.add(id(mod))
        if stop_early and len(seen) == len(linears):
            raise _StopForward

    handles = [mod.register_forward_pre_hook(hook) for mod in linears]
    try:
        _run_checked(model, batch, index, op)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def _collect(model, linears: list, batches: list, stop_early: bool, op: str, reference=None) -> _InputStats:
    """Input statistics of linears[0] over every calibration batch, with the earlier layers already
    quantized; reference: (float model, its copies of linears) whose inputs the cross term pairs with."""
    stats = _InputStats(linears[0].in_features, linears[0].weight.device, cross=reference is not None)
    for i, batch in enumerate(batches):
        inputs = _capture(model, linears, batch, i, stop_early, op)
        float_inputs = [None] * len(inputs) if reference is None else _capture(*reference, batch, i, stop_early, op)
        for x, x_float in zip(inputs, float_inputs, strict=True):
            stats.add(x, x_float)
    return stats


def _fold_into_norm(model, norm, linears: list, scale: torch.Tensor, batch, undo_params: list) -> bool:
    """Folds 1/scale into norm's affine parameters if the model's output provably stays the same (the
    norm's output must feed nothing but these linears); returns whether it did. A fold appends
    (parameter, value before) of the norm to undo_params."""
    reference = [t.clone() for t in _tensors_of(_run(model, batch)) if t.is_floating_point()]
    params = [norm.weight] + ([norm.bias] if norm.bias is not None else [])
    saved = [p.detach().clone() for p in params] + [lin.weight.detach().clone() for lin in linears]
    for p in params:
        p.data /= scale.to(p.dtype)
    for lin in linears:
        lin.weight.data *= scale.to(lin.weight.dtype)
    folded = [t for t in _tensors_of(_run(model, batch)) if t.is_floating_point()]
    same = len(folded) == len(reference) and all(
        torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max().clamp(min=1))) for a, b in zip(folded, reference))
    if not same:
        for p, old in zip(params + [lin.weight for lin in linears], saved):
            p.data.copy_(old)
    else:  # keep the norm folded, but hand the linears back unscaled: the caller scales them when quantizing
        for lin, old in zip(linears, saved[len(params):]):
            lin.weight.data.copy_(old)
        undo_params.extend(zip(params, saved[:len(params)]))
    return same


# Ridge, as a fraction of mean(diag H), of the least-squares target correction of asymmetric calibration:
# the correction is a [K, K] regression on a few thousand tokens, so it is damped more than GPTQ's H^-1.
_TARGET_DAMP = 0.1


def _float_targets(weights: list, stats: _InputStats) -> list:
    """The weights W* with ||W X_f - Q X||^2 = ||(W* - Q) X||^2 + const for the inputs X of the partly quantized
    model and X_f of the float model: W* = W C H^-1 = W + W (C - H) H^-1 with C = X_f^T X, H = X^T X (ridge
    damped). Quantizing W* by the ordinary (symmetric) objective then also undoes the earlier layers' error."""
    h = stats.gram / max(stats.tokens, 1)
    c = stats.cross / max(stats.tokens, 1)
    damped = h + _TARGET_DAMP * float(h.diagonal().mean()) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    correction = torch.linalg.solve(damped, (c - h).t()).t()  # (C - H) H^-1, H symmetric
    return [(w.to(h.dtype) + w.to(h.dtype) @ correction).to(torch.float32) for w in weights]


def _quantize_stage(model, stage: dict, linears: list, batches: list, reference, bits: int, group_size: int,
                    scheme: str, method: str, *, precise: bool, bcq_iters: int, act_order: bool, damp: float,
                    undo_params: list, op: str) -> list:
    """LutLinear replacements of one stage's linears (which share one input), from its calibration statistics."""
    from .nn import LutLinear

    stats = _collect(model, linears, batches, not stage["repeated"], op, reference=reference)
    hessian = stats.hessian()
    weights = [lin.weight.detach().to(torch.float32) for lin in linears]
    if reference is not None:
        weights = _float_targets(weights, stats)
    scale, folded = None, False
    if "awq" in method:
        scale = _awq_scale(weights, hessian, stats.absmean(), bits, group_size, scheme, bcq_iters)
        norm = stage["source"]
        folded = (norm is not None and _is_norm(norm, scale.shape[0]) and not bool((scale == 1).all())
                  and _fold_into_norm(model, norm, linears, scale, batches[0], undo_params))
        weights = [w * scale for w in weights]
        hessian = hessian / scale[:, None] / scale[None, :]  # of the inputs x / s
    replacements = []
    for lin, w in zip(linears, weights):
        if "gptq" in method:
            packed = gptq_quantize(w, hessian, bits, group_size, scheme, act_order=act_order, damp=damp,
                                   bcq_iters=bcq_iters)
        else:
            packed = _quantize_clipped(w, hessian, bits, group_size, scheme, bcq_iters)
        replacements.append(LutLinear(packed, lin.bias, precise=precise,
                                      input_scale=None if scale is None or folded else 1 / scale))
    return replacements


def quantize_model_calibrated(model: torch.nn.Module, targets: list, bits: int, group_size: int | None,
                              scheme: str, method: str, calibration: Iterable, *, precise: bool, progress,
                              bcq_iters: int, act_order: bool, damp: float, asymmetric: bool,
                              op: str) -> torch.nn.Module:
    """gptq / awq over the (name, nn.Linear) targets of model, stage by stage in execution order. On any
    error the model is restored (its linears and any folded norm) before the error propagates."""
    from .nn import LutLinear

    if not isinstance(asymmetric, bool):
        raise TypeError(f"{op}: asymmetric must be a bool, got {type(asymmetric).__name__}")
    # Bad bits / group_size / weights fail here, before any forward pass.
    group_sizes = {name: _check_quantize_args(op, linear.weight, bits, group_size, scheme) for name, linear in targets}
    batches = _calibration_batches(calibration, model, op)
    by_name = dict(targets)
    was_training = model.training
    model.eval()
    float_model = None
    if asymmetric:
        try:
            float_model = copy.deepcopy(model)
        except Exception as e:
            raise TypeError(f"{op}: asymmetric calibration runs a float copy of the model, but copy.deepcopy "
                            f"failed ({type(e).__name__}: {e}); pass asymmetric=False") from e
    undo_modules, undo_params = [], []  # (name, original linear), (parameter, value before folding)
    try:
        with torch.no_grad():
            stages = _trace_stages(model, by_name, batches[0], op)
            traced = {n for stage in stages for n in stage["names"]}
            unused = [n for n in by_name if n not in traced]
            if unused:
                warnings.warn(f"{op}: {len(unused)} linear layer(s) never ran on the calibration data and are "
                              f"rounded to nearest: {', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}",
                              stacklevel=3)
                stages += [{"names": [n], "source": None, "repeated": False} for n in unused]
            items = stages
            if progress is None:
                progress = len(targets) >= 16
            if progress:
                from tqdm.auto import tqdm
                items = tqdm(stages, desc=f"fastops: {method} {bits}-bit {scheme}", unit="stage")
            for stage in items:
                linears = [by_name[n] for n in stage["names"]]
                if stage["names"][0] not in traced:
                    replacements = [LutLinear.from_linear(lin, bits, group_size, scheme, precise=precise,
                                                          bcq_iters=bcq_iters) for lin in linears]
                else:
                    reference = None if float_model is None else (
                        float_model, [float_model.get_submodule(n) for n in stage["names"]])
                    gs = group_sizes[stage["names"][0]]  # the linears of a stage share in_features
                    replacements = _quantize_stage(model, stage, linears, batches, reference, bits, gs, scheme,
                                                   method, precise=precise, bcq_iters=bcq_iters,
                                                   act_order=act_order, damp=damp, undo_params=undo_params, op=op)
                for name, lin, new in zip(stage["names"], linears, replacements):
                    set_submodule(model, name, new)
                    undo_modules.append((name, lin))
    except BaseException:
        for name, lin in reversed(undo_modules):
            set_submodule(model, name, lin)
        with torch.no_grad():
            for param, value in reversed(undo_params):
                param.copy_(value)
        raise
    finally:
        model.train(was_training)
    return model
