"""fastops.lut calibration-aware quantization: gptq_quantize, hqq_quantize, AWQ, quantize_model(method=...)."""
from __future__ import annotations

import io
import warnings

import fastops
import numpy as np
import pytest
import torch
from fastops import lut
from fastops.nn import LutLinear
from fastops.reference import lut as ref

SCHEME_BITS = [("asym", b) for b in (1, 2, 3, 4)] + [("sym", b) for b in (1, 2, 3, 4)] + \
    [("bcq", b) for b in (1, 2, 3, 4)] + [("ternary", 2)]


def _inputs(gen, n, k, dtype=torch.float32):
    """Layer inputs like a transformer's: correlated features with a few large-magnitude channels."""
    channel = torch.exp(torch.randn(k, generator=gen, dtype=dtype))
    mix = torch.eye(k, dtype=dtype) + 0.5 * torch.randn(k, k, generator=gen, dtype=dtype) / k ** 0.5
    return (torch.randn(n, k, generator=gen, dtype=dtype) @ mix) * channel


def _hessian(x):
    return x.t() @ x / x.shape[0]


def _output_error(w, w_hat, x):
    return float(((x.double() @ (w.double() - w_hat.double()).t()) ** 2).sum())


# ---------------------------------------------------------------------------------------------------
# gptq_quantize
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,k,group_size", [(48, 200, 64), (33, 96, 32), (16, 256, 128)])
@pytest.mark.parametrize("scheme", ["asym", "sym"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("clip", [False, True])
def test_gptq_matches_float64_reference(gen, m, k, group_size, scheme, bits, act_order, clip):
    x = _inputs(gen, 400, k, torch.float64)
    w = torch.randn(m, k, generator=gen, dtype=torch.float64)
    h = _hessian(x)
    # a small block size, so lazy-update blocks cross group boundaries (200 = 3 x 64 + a partial group)
    q = lut.gptq_quantize(w, h, bits, group_size, scheme, act_order=act_order, clip=clip, block_size=32)
    codes, scales, zeros = ref.gptq(w, h, bits, group_size, scheme, act_order, 0.01, clip)
    np.testing.assert_array_equal(q.codes().numpy(), codes)
    np.testing.assert_array_equal(q.scales[:, 0, :m].t().double().numpy(), scales)
    np.testing.assert_array_equal(q.zeros[:, :m].t().double().numpy(), zeros)
    assert q.shape == (m, k) and q.scheme == scheme  # natural column order: no permutation is stored


@pytest.mark.parametrize("scheme,bits", [s for s in SCHEME_BITS if s[1] >= 2])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_with_identity_hessian_is_round_to_nearest(gen, scheme, bits, act_order):
    # H = I: no cross terms, nothing to compensate; every group is fitted to its original weights.
    w = torch.randn(40, 160, generator=gen)
    q = lut.gptq_quantize(w, torch.eye(160), bits, 32, scheme, act_order=act_order, clip=False)
    assert torch.equal(q.codes(), lut.quantize(w, bits, 32, scheme).codes())
    assert torch.equal(q.scales, lut.quantize(w, bits, 32, scheme).scales)


@pytest.mark.parametrize("scheme,bits", SCHEME_BITS)
def test_calibrated_methods_beat_rtn_on_calibration_error(gen, scheme, bits):
    m, k, group_size = 64, 256, 64
    x = _inputs(gen, 1024, k)
    w = torch.randn(m, k, generator=gen) * 0.05
    h = _hessian(x)
    rtn = _output_error(w, lut.quantize(w, bits, group_size, scheme).dequantize(), x)
    gptq = _output_error(w, lut.gptq_quantize(w, h, bits, group_size, scheme).dequantize(), x)
    assert gptq < rtn
    model = torch.nn.Sequential(torch.nn.Linear(k, m, bias=False))
    model[0].weight.data.copy_(w)
    lut.quantize_model(model, bits, group_size, scheme, method="awq", calibration=[x])
    layer = model[0]
    assert isinstance(layer, LutLinear) and layer.input_scale is not None  # nothing before it to fold into
    awq = _output_error(w, layer.weight.dequantize() * layer.input_scale, x)
    assert awq < rtn


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("group_size", [32, 128])
def test_hqq_lowers_the_weight_error_it_optimizes(gen, bits, group_size):
    # HQQ is data free: its objective is the l_p (p < 1) / l_1 weight error, which must not exceed min-max RTN's.
    w = torch.randn(96, 300, generator=gen) * 0.02
    w[torch.rand(w.shape, generator=gen) < 0.01] *= 8  # outliers, where the l_p objective matters
    hqq = lut.hqq_quantize(w, bits, group_size)
    assert hqq.scheme == "asym"
    rtn_err = (w - lut.quantize(w, bits, group_size, "asym").dequantize()).abs().mean()
    hqq_err = (w - hqq.dequantize()).abs().mean()
    assert hqq_err < rtn_err
    assert not torch.equal(hqq.zeros, hqq.zeros.round())  # float zero points


def test_gptq_act_order_weight_round_trips_and_multiplies_without_a_gather(gen):
    x = _inputs(gen, 512, 192)
    w = torch.randn(72, 192, generator=gen)
    q = lut.gptq_quantize(w, _hessian(x), 3, 64, "asym", act_order=True)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    loaded = lut.LutWeight.from_state_dict(torch.load(buf))
    assert torch.equal(loaded.codes(), q.codes())
    xt = torch.randn(5, 192, generator=gen)
    y = fastops.lut_gemm(xt, loaded, precise=True)
    torch.testing.assert_close(y.double(), ref.lut_gemm(xt, q), rtol=1e-5, atol=1e-4)


def test_gptq_keeps_inputs_and_handles_dead_features(gen):
    x = _inputs(gen, 300, 128)
    x[:, 5] = 0  # a feature the calibration never activates: diag(H) = 0
    h = _hessian(x)
    w = torch.randn(32, 128, generator=gen)
    w0, h0 = w.clone(), h.clone()
    q = lut.gptq_quantize(w, h, 4, 32, "asym")
    assert torch.equal(w, w0) and torch.equal(h, h0)
    assert torch.isfinite(q.dequantize()).all()
    assert (q.dequantize()[:, 5] - w[:, 5]).abs().max() < 0.2 * w.abs().max()  # the weight is kept, rounded


def test_gptq_bad_input(gen):
    w, h = torch.randn(16, 64, generator=gen), torch.eye(64)
    with pytest.raises(ValueError, match="hessian"):
        lut.gptq_quantize(w, torch.eye(32), 4, 32)
    with pytest.raises(ValueError, match="hessian"):
        lut.gptq_quantize(w, torch.full((64, 64), float("nan")), 4, 32)
    with pytest.raises(ValueError, match="negative diagonal"):
        lut.gptq_quantize(w, -torch.eye(64), 4, 32)
    singular = torch.ones(64, 64)
    with pytest.raises(ValueError, match="increase damp"):
        lut.gptq_quantize(w, singular, 4, 32, damp=0.0)
    lut.gptq_quantize(w, singular, 4, 32)  # the default damping makes it positive definite
    with pytest.raises(ValueError, match="damp"):
        lut.gptq_quantize(w, h, 4, 32, damp=-1)
    with pytest.raises(TypeError, match="hessian"):
        lut.gptq_quantize(w, torch.eye(64, dtype=torch.int32), 4, 32)
    with pytest.raises(ValueError, match="device"):
        lut.gptq_quantize(w, torch.eye(64, device="meta"), 4, 32)
    with pytest.raises(ValueError, match="ternary"):
        lut.gptq_quantize(w, h, 3, 32, "ternary")
    with pytest.raises(ValueError, match="p must"):
        lut.hqq_quantize(w, 4, 32, p=1.5)


# ---------------------------------------------------------------------------------------------------
# quantize_model with calibration
# ---------------------------------------------------------------------------------------------------
class _Block(torch.nn.Module):
    """A small transformer block: attention with q/k/v sharing one input, then an MLP. pre_norm: the norm's
    output feeds only q/k/v (AWQ can fold into it); post-norm: the norm's output also feeds the residual."""

    def __init__(self, d, pre_norm):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.up, self.down = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.norm1(x) if self.pre_norm else x
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / h.shape[-1] ** 0.5, dim=-1) @ self.v(h)
        x = x + self.o(att)
        if not self.pre_norm:
            x = self.norm1(x)
        h = self.norm2(x) if self.pre_norm else x
        x = x + self.down(torch.nn.functional.gelu(self.up(h)))
        return x if self.pre_norm else self.norm2(x)


class _TinyModel(torch.nn.Module):
    def __init__(self, gen, d=64, layers=2, pre_norm=True):
        super().__init__()
        self.embed = torch.nn.Embedding(100, d)
        self.blocks = torch.nn.ModuleList(_Block(d, pre_norm) for _ in range(layers))
        self.lm_head = torch.nn.Linear(d, 100)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1) + (p.dim() == 1) * 1.0)
            self.embed.weight.mul_(torch.exp(torch.randn(d, generator=gen)))  # outlier channels

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return x


def _tokens(gen, batches, n=16):
    return [torch.randint(0, 100, (2, n), generator=gen) for _ in range(batches)]


def _model_error(model, reference, tokens):
    with torch.no_grad():
        return sum(float(((model(t) - reference(t)) ** 2).sum()) for t in tokens)


@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("bits", [2, 3])
def test_quantize_model_calibrated_beats_rtn(gen, pre_norm, bits):
    import copy

    torch.manual_seed(0)
    model = _TinyModel(gen, pre_norm=pre_norm).eval()
    calib, held_out = _tokens(gen, 8), _tokens(gen, 4)
    errors = {}
    for method in ("rtn", "gptq", "awq", "awq+gptq"):
        q = copy.deepcopy(model)
        lut.quantize_model(q, bits, 32, method=method, calibration=None if method == "rtn" else calib)
        linears = [m for m in q.modules() if isinstance(m, LutLinear)]
        assert len(linears) == 12 and isinstance(q.lm_head, torch.nn.Linear)  # lm_head skipped by default
        errors[method] = _model_error(q, model, held_out)
    assert all(errors[m] < errors["rtn"] for m in ("gptq", "awq", "awq+gptq")), errors


def test_awq_folds_into_a_norm_only_where_the_output_is_unchanged(gen):
    import copy

    for pre_norm in (True, False):
        model = _TinyModel(gen, layers=2, pre_norm=pre_norm).eval()
        calib, held_out = _tokens(gen, 4), _tokens(gen, 2)
        awq, rtn = copy.deepcopy(model), copy.deepcopy(model)
        lut.quantize_model(awq, 3, 32, method="awq", calibration=calib)
        lut.quantize_model(rtn, 3, 32, method="rtn")
        first, second = awq.blocks
        if pre_norm:  # norm1 feeds only q/k/v, norm2 only up: the scales live in their weights
            for block, before in zip(awq.blocks, model.blocks):
                assert all(getattr(block, n).input_scale is None for n in ("q", "k", "v", "up"))
                assert not torch.equal(block.norm1.weight, before.norm1.weight)
                assert not torch.equal(block.norm2.weight, before.norm2.weight)
        else:  # the first block's norm2 output is also the second block's residual: folding would change the model
            assert all(getattr(second, n).input_scale is not None for n in "qkv")
            assert torch.equal(first.norm2.weight, model.blocks[0].norm2.weight)
        assert all(getattr(block, n).input_scale is not None for block in awq.blocks for n in ("o", "down"))
        assert _model_error(awq, model, held_out) < _model_error(rtn, model, held_out)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_asymmetric_calibration_corrects_the_earlier_layers_error(gen, method):
    import copy

    model = _TinyModel(gen, layers=3).eval()
    calib, held_out = _tokens(gen, 16, n=32), _tokens(gen, 4)
    errors = {}
    for asymmetric in (False, True):
        q = copy.deepcopy(model)
        lut.quantize_model(q, 2, 32, method=method, calibration=calib, asymmetric=asymmetric)
        errors[asymmetric] = _model_error(q, model, held_out)
    assert errors[True] < errors[False], errors


def test_asymmetric_calibration_of_the_first_layer_is_symmetric(gen):
    # The first layer's inputs are the same in the float and the quantized model: nothing to correct.
    x = [_inputs(gen, 64, 96) for _ in range(3)]
    layers = {}
    for asymmetric in (False, True):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(96, 40))
        lut.quantize_model(model, 3, 32, method="gptq", calibration=x, asymmetric=asymmetric)
        layers[asymmetric] = model[0].weight
    for name in ("planes", "scales", "zeros"):
        assert torch.equal(getattr(layers[True], name), getattr(layers[False], name))


@pytest.mark.parametrize("method", ["gptq", "awq+gptq"])
def test_quantize_model_restores_the_model_when_a_stage_fails(gen, monkeypatch, method):
    from fastops import _lut_calibrate

    model = _TinyModel(gen, layers=2).eval()
    modules = dict(model.named_modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    real, calls = _lut_calibrate.gptq_quantize, []

    def failing(*args, **kwargs):  # the fifth linear (block 0's up, after a folded norm2) fails
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(_lut_calibrate, "gptq_quantize", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        lut.quantize_model(model, 3, 32, method=method, calibration=_tokens(gen, 2))
    assert len(calls) == 5
    assert all(modules[name] is module for name, module in model.named_modules())
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_quantize_model_asymmetric_needs_a_copyable_model(gen):
    import threading

    model = _TinyModel(gen, layers=1).eval()
    model.lock = threading.Lock()  # not deep-copyable
    with pytest.raises(TypeError, match="asymmetric=False"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=_tokens(gen, 1))
    with pytest.raises(TypeError, match="asymmetric must be a bool"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=_tokens(gen, 1), asymmetric=1)
    lut.quantize_model(model, 4, 32, method="gptq", calibration=_tokens(gen, 1), asymmetric=False)
    assert sum(isinstance(x, LutLinear) for x in model.modules()) == 6


def test_quantize_model_calibration_forms_and_training_mode(gen):
    model = _TinyModel(gen, layers=1)
    model.train()
    batches = _tokens(gen, 3)
    lut.quantize_model(model, 4, 32, method="gptq", calibration=(t for t in batches), progress=False)  # generator
    assert model.training
    model2 = _TinyModel(gen, layers=1).eval()
    lut.quantize_model(model2, 4, 32, method="gptq", calibration=[{"tokens": t} for t in batches])  # kwargs
    model3 = _TinyModel(gen, layers=1).eval()
    lut.quantize_model(model3, 4, 32, method="awq", calibration=[(t,) for t in batches])  # positional tuples
    for m in (model, model2, model3):
        assert sum(isinstance(x, LutLinear) for x in m.modules()) == 6


def test_quantize_model_layer_the_calibration_never_reaches(gen):
    model = _TinyModel(gen, layers=1).eval()
    model.unused = torch.nn.Linear(64, 64)
    with pytest.warns(UserWarning, match="never ran on the calibration data"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=_tokens(gen, 2))
    assert isinstance(model.unused, LutLinear)


def test_quantize_model_bad_calibration(gen):
    model = _TinyModel(gen, layers=1).eval()
    with pytest.raises(ValueError, match="needs calibration"):
        lut.quantize_model(model, 4, 32, method="gptq")
    with pytest.raises(ValueError, match="needs calibration"):
        lut.quantize_model(model, 4, 32, method="awq")
    with pytest.raises(ValueError, match="uses no calibration"):
        lut.quantize_model(model, 4, 32, method="rtn", calibration=_tokens(gen, 1))
    with pytest.raises(ValueError, match="calibration is empty"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=[])
    with pytest.raises(ValueError, match="calibration batch 0 has a tensor on meta"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=[torch.zeros(2, 8, dtype=torch.long,
                                                                                     device="meta")])
    with pytest.raises(ValueError, match="calibration batch 0 could not be run"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=[torch.randn(2, 8)])  # floats, not tokens
    with pytest.raises(TypeError, match="calibration must be an iterable"):
        lut.quantize_model(model, 4, 32, method="gptq", calibration=3)
    with pytest.raises(ValueError, match="method must be one of"):
        lut.quantize_model(model, 4, 32, method="gptqq", calibration=_tokens(gen, 1))
    with pytest.raises(ValueError, match="bits"):
        lut.quantize_model(model, 5, 32, method="gptq", calibration=_tokens(gen, 1))
    with pytest.raises(ValueError, match="scheme 'asym'"):
        lut.quantize_model(model, 4, 32, "bcq", method="hqq")
    assert not any(isinstance(x, LutLinear) for x in model.modules())  # every failure left the model as it was


def test_lut_linear_input_scale(gen):
    w = lut.quantize(torch.randn(24, 64, generator=gen), 4, 32)
    scale = torch.rand(64, generator=gen) + 0.5
    layer = LutLinear(w, input_scale=scale)
    x = torch.randn(3, 64, generator=gen)
    torch.testing.assert_close(layer(x), fastops.lut_gemm(x * scale, w))
    assert "input_scale" in layer.state_dict() and "input_scale=True" in repr(layer)
    with pytest.raises(ValueError, match="input_scale"):
        LutLinear(w, input_scale=torch.ones(63))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.to(torch.float32)
