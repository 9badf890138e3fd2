"""The OBS core (obs.py) against a naive reference, exact invariants, and the damping-retry path."""

from __future__ import annotations

import pytest
import torch

from modelscale.techniques.oneshot.obs import (
    QuantSpec,
    inverse_cholesky,
    obs_compress,
    upper_factor_of_inverse,
)
from modelscale.techniques.quantize.common import dequantize_groups, quantize_groups


def _layer(rows=12, cols=32, n=256, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype)
    # correlated inputs with uneven channel scales, as in real activations
    mix = torch.randn(cols, cols, generator=g, dtype=dtype) * 0.3 + torch.eye(cols, dtype=dtype)
    x = (torch.randn(n, cols, generator=g, dtype=dtype) @ mix) * torch.linspace(0.2, 3.0, cols, dtype=dtype)
    return w, x


def naive_obq(w, h, spec: QuantSpec, *, damp, act_order=False, keep=None):
    """Straightforward OBQ: quantize one column, spread its error with the full inverse, eliminate it.

    No Cholesky, no blocks: H⁻¹ is updated by Gaussian elimination after every column (OBQ, eq. 3)."""
    w = w.clone()
    cols = w.shape[1]
    h = h + damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    order = (
        torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(cols)
    )
    group = cols if spec.group_size == 0 else spec.group_size
    hinv = torch.linalg.inv(h)
    out = torch.zeros_like(w)
    params = {}
    if act_order or group == cols:  # static groups from the weights before any update
        for g0 in range(0, cols, group):
            params[g0 // group] = spec.params(w[:, g0 : g0 + group])
    done = []
    for i in order.tolist():
        g = i // group
        if g not in params:
            params[g] = spec.params(w[:, g * group : (g + 1) * group])
        col = w[:, i] if keep is None else w[:, i] * keep[:, i]
        _, q = spec.round(col, *params[g])
        err = (w[:, i] - q) / hinv[i, i]
        w -= err[:, None] * hinv[i][None, :]
        w[:, done] = out[:, done]  # columns already fixed stay fixed (their H⁻¹ rows are eliminated)
        hinv = hinv - hinv[:, i : i + 1] @ hinv[i : i + 1, :] / hinv[i, i]
        out[:, i] = q
        done.append(i)
    return out


@pytest.mark.parametrize("group_size,act_order", [(0, False), (8, False), (8, True), (0, True)])
def test_gptq_update_matches_naive_reference(group_size, act_order):
    w, x = _layer()
    h = 2 * x.t() @ x / x.shape[0]
    spec = QuantSpec(bits=3, group_size=group_size, symmetric=False)
    ours = obs_compress(w, h, quant=spec, act_order=act_order, block_size=16, damp=0.01)
    ref = naive_obq(w, h, spec, damp=0.01, act_order=act_order)
    torch.testing.assert_close(ours.weight, ref, rtol=0, atol=1e-9)
    # the stored codes dequantize to the same weight
    group = 32 if group_size == 0 else group_size
    deq = dequantize_groups(ours.codes, ours.scale, ours.zero, group_size=group).double()
    torch.testing.assert_close(deq, ours.weight, rtol=0, atol=1e-6)


def test_eight_bit_per_channel_is_rtn_or_better():
    w, x = _layer(rows=64, cols=96, n=512, dtype=torch.float32)
    h = 2 * x.t() @ x / x.shape[0]
    out = obs_compress(w, h, quant=QuantSpec(bits=8, group_size=0), damp=1e-6)
    q, s, z = quantize_groups(w, bits=8, group_size=0, symmetric=False)
    rtn = dequantize_groups(q, s, z, group_size=96)

    def err(wq):
        return float(((w - wq) @ x.t()).pow(2).sum())

    assert out.retries == 0
    assert err(out.weight) <= err(rtn)


def test_rank_deficient_calibration_retries_damping_and_records_it():
    g = torch.Generator().manual_seed(1)
    cols = 48
    x = torch.randn(4, cols, generator=g)  # 4 samples in 48 dimensions: H has rank 4
    h = 2 * x.t() @ x / 4
    w = torch.randn(8, cols, generator=g)
    upper, lam, used = inverse_cholesky(h, 1e-8)
    assert upper is not None and used >= 1 and lam == pytest.approx(1e-8 * 10**used)
    out = obs_compress(w, h, quant=QuantSpec(bits=4, group_size=16), damp=1e-8)
    assert out.retries == used and not out.fallback and torch.isfinite(out.weight).all()


def test_hopeless_hessian_falls_back_to_round_to_nearest():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 48, generator=g)
    h = 2 * x.t() @ x / 4
    w = torch.randn(8, 48, generator=g)
    out = obs_compress(w, h, quant=QuantSpec(bits=4, group_size=16), damp=1e-13)  # 3 retries reach only 1e-10
    assert out.fallback and out.retries == 3
    q, s, z = quantize_groups(w, bits=4, group_size=16, symmetric=False)
    assert torch.equal(out.codes, q) and torch.equal(out.weight, dequantize_groups(q, s, z, group_size=16))


def test_dead_inputs_and_pruning_invariants():
    w, x = _layer(rows=8, cols=16, dtype=torch.float32)
    x[:, 3] = 0  # an input that never fires: its column is zeroed, never a NaN
    h = 2 * x.t() @ x / x.shape[0]
    out = obs_compress(w, h, n_m=(2, 4), block_size=8)
    assert torch.isfinite(out.weight).all()
    nonzero = (out.weight != 0).view(8, 4, 4).sum(-1)
    assert (nonzero <= 2).all() and out.keep.view(8, 4, 4).sum(-1).eq(2).all()
    assert (out.weight[~out.keep] == 0).all()
    un = obs_compress(w, h, sparsity=0.5, block_size=8)
    assert int((~un.keep).sum()) == w.numel() // 2


def test_damping_is_added_in_place_and_taken_back():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 24, generator=g, dtype=torch.float64)
    h = x.t() @ x
    before = h.clone()
    upper, lam, used = inverse_cholesky(h, 0.01)
    assert torch.equal(h, before)  # the caller's Hessian is unchanged
    damped = before + lam * torch.diagonal(before).mean() * torch.eye(24, dtype=torch.float64)
    assert torch.allclose(upper.t() @ upper, torch.linalg.inv(damped), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_cholesky_in_reversed_order_gives_the_upper_factor_of_the_inverse(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 96, generator=g, dtype=torch.float64)
    h = (x.t() @ x / 300 + 0.05 * torch.eye(96, dtype=torch.float64)).to(dtype)
    upper = upper_factor_of_inverse(h)
    assert (
        upper.dtype == dtype and torch.equal(upper, torch.triu(upper)) and (torch.diagonal(upper) > 0).all()
    )
    reference = torch.linalg.cholesky(torch.linalg.inv(h.double()), upper=True)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(upper.double(), reference, rtol=tol, atol=tol * float(reference.abs().max()))
    not_definite = h.clone()
    not_definite[5, 5] = -1.0
    assert upper_factor_of_inverse(not_definite) is None
