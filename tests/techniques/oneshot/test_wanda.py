"""Wanda against an independent reference: the right inputs, every token, per input feature, per output row."""

from __future__ import annotations

import copy

import torch
from torch import nn

from modelscale import apply
from modelscale.techniques.oneshot.wanda import WandaConfig
from modelscale.techniques.prune.masks import get_mask
from tests.techniques.oneshot.conftest import tiny_gpt, windows


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}


def _reference_masks(model: nn.Module, calib: torch.Tensor, sparsity: float) -> dict[str, torch.Tensor]:
    """Naive sequential Wanda: for each block, ‖X_j‖₂ over all tokens from hooks on a model whose earlier
    blocks are already pruned, then per output row drop the lowest |W_ij|·‖X_j‖₂ (float64 throughout)."""
    ref = copy.deepcopy(model).double()
    masks: dict[str, torch.Tensor] = {}
    for i in range(len(ref.blocks)):
        layers = {n: m for n, m in _linears(ref).items() if n.startswith(f"blocks.{i}.")}
        sq = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in layers.items()}

        def hook(name, sq=sq):
            def fn(_module, args, _out):
                x = args[0].reshape(-1, args[0].shape[-1])
                sq[name] += (x * x).sum(0)

            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
        with torch.no_grad():
            ref(calib)
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, m in layers.items():
                score = m.weight.abs() * sq[name].sqrt()[None, :]
                drop = score.topk(int(m.in_features * sparsity), dim=1, largest=False).indices
                keep = torch.ones_like(score, dtype=torch.bool).scatter(1, drop, False)
                masks[name] = keep
                m.weight.mul_(keep)
    return masks


def test_wanda_masks_match_a_naive_sequential_reference_on_every_layer(stdlib_bytes):
    model = tiny_gpt(n_layer=2, n_embd=64, block_size=32)
    calib = windows(stdlib_bytes, 32, 32, seed=3)
    result = apply(copy.deepcopy(model), WandaConfig(sparsity=0.5, batch_size=8), calibration=[calib])
    expected = _reference_masks(model, calib, 0.5)
    got = {n: get_mask(m) for n, m in _linears(result.model).items()}
    assert set(got) == set(expected) and len(got) == 12  # q/k/v/out projections and both MLP layers, ×2
    for name, keep in expected.items():
        assert got[name] is not None, f"{name} was not pruned"
        agree = float((got[name] == keep).float().mean())
        assert agree >= 0.999, f"{name}: {agree:.4f} of the mask agrees with the reference"
        assert got[name].sum(1).eq(keep.shape[1] // 2).all()  # the comparison group is the output row


def test_wanda_keeps_the_weights_of_a_loud_input_feature_where_magnitude_drops_them():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 8)).eval()
    with torch.no_grad():
        layer[0].weight[:, 5] = 0.01 * torch.sign(layer[0].weight[:, 5])  # tiny weights...
    x = torch.randn(64, 16)
    x[:, 5] *= 1000.0  # ...on an input that is 1000× louder than the others
    wanda = apply(copy.deepcopy(layer), WandaConfig(sparsity=0.5), calibration=[x]).model
    keep = get_mask(wanda[0])
    assert keep[:, 5].all()  # |W|·‖X‖ ranks column 5 first in every row
    assert keep.sum(1).eq(8).all()
    magnitude_keep = layer[0].weight.abs() >= layer[0].weight.abs().median(dim=1, keepdim=True).values
    assert not magnitude_keep[:, 5].any()  # magnitude alone would have dropped the whole column


def test_zero_sparsity_wanda_is_the_identity(stdlib_bytes):
    model = tiny_gpt()
    calib = windows(stdlib_bytes, 8, 32, seed=1)
    pruned = apply(copy.deepcopy(model), WandaConfig(sparsity=0.0), calibration=[calib]).model
    with torch.no_grad():
        assert torch.equal(pruned(calib), model(calib))


def test_wanda_on_a_conv1d_scores_input_rows_and_compares_within_each_output_column():
    """HF Conv1D stores its weight (in × out): the activation norm must scale the *rows* of that weight
    and each output (a column there) keeps its own top half; a non-square layer catches a transpose."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(8, 16)).eval()  # nf=8 outputs, nx=16 inputs: weight (16, 8)
    with torch.no_grad():
        model[0].weight[5, :] = 0.01 * torch.sign(model[0].weight[5, :])  # tiny weights on input 5...
    x = torch.randn(4, 32, 16)
    x[..., 5] *= 1000.0  # ...which is 1000× louder than the other inputs
    x[..., 11] *= 0.001  # and input 11 almost silent
    keep = get_mask(apply(copy.deepcopy(model), WandaConfig(sparsity=0.5), calibration=[x]).model[0])
    assert keep.shape == (16, 8)
    norm = x.reshape(-1, 16).double().pow(2).sum(0).sqrt()
    score = model[0].weight.detach().double().abs() * norm[:, None]  # (in, out), computed in place
    drop = score.topk(8, dim=0, largest=False).indices
    expected = torch.ones_like(score, dtype=torch.bool).scatter(0, drop, False)
    assert torch.equal(keep, expected)
    assert keep.sum(0).eq(8).all()  # every output keeps 8 of its 16 inputs
    assert keep[5, :].all() and not keep[11, :].any()


def test_wanda_layer_group_ranks_the_whole_layer_at_once():
    """group="layer" (the paper's ablation): half of the layer's |W|·‖X‖ scores go, rows may differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    with torch.no_grad():
        model[0].weight[:2] *= 10.0  # two loud output rows: a per-layer ranking keeps more of them
    x = torch.randn(128, 16) * torch.linspace(0.1, 3.0, 16)  # calibration_samples=128 rows: all used
    keep = get_mask(apply(copy.deepcopy(model), WandaConfig(group="layer"), calibration=[x]).model[0])
    score = model[0].weight.detach().double().abs() * x.double().pow(2).sum(0).sqrt()[None, :]
    expected = score > score.flatten().kthvalue(64).values
    assert torch.equal(keep, expected) and int(keep.sum()) == 64
    assert keep[:2].sum(1).gt(8).all() and keep.sum(1).ne(8).any()  # not half of every row
    per_row = get_mask(apply(copy.deepcopy(model), WandaConfig(), calibration=[x]).model[0])
    assert per_row.sum(1).eq(8).all()
