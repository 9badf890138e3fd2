"""2:4 semi-structured sparsity: exact pattern, masks through training, skips, honest notes, CUDA kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.select import Target
from modelscale.techniques.prune.magnitude import MagnitudePruneConfig
from modelscale.techniques.prune.masks import get_mask
from modelscale.techniques.prune.semistructured import SemiStructured24Config, two_four_mask


def _groups(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1, 4)


def test_pattern_keeps_exactly_the_two_largest_of_every_four():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    original = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    result = apply(model, SemiStructured24Config())
    for before, layer in zip(original, [m for m in result.model if isinstance(m, nn.Linear)]):
        groups = _groups(layer.weight)
        assert ((groups == 0).sum(-1) == 2).all()  # random weights: exactly 2 zeros per group of 4
        top2 = before.abs().reshape(groups.shape).topk(2, dim=-1).indices.sort(-1).values
        kept = (groups != 0).nonzero()[:, -1].reshape(*groups.shape[:2], 2)
        assert torch.equal(kept, top2)
        assert torch.equal(layer.weight[layer.weight != 0], before[layer.weight != 0])  # survivors unchanged
    assert result.record.summary["sparsity"] == 0.5
    assert any("same size and speed" in note for note in result.record.notes)


def test_masks_survive_an_optimizer_step():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    sparse = apply(model, SemiStructured24Config()).model
    before = sparse[0].parametrizations.weight.original.detach().clone()
    opt = torch.optim.SGD(sparse.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        sparse(torch.randn(8, 16)).pow(2).sum().backward()
        opt.step()
    assert not torch.equal(sparse[0].parametrizations.weight.original, before)  # training changed weights
    for layer in (sparse[0], sparse[2]):
        assert ((_groups(layer.weight) == 0).sum(-1) >= 2).all()
        assert torch.equal(layer.weight != 0, get_mask(layer) & (layer.weight != 0))


def test_unfit_layers_are_skipped_and_named():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 6), nn.Linear(6, 4), nn.Linear(4, 4)
    )  # 144 fits; 6 is not a multiple of 4; 4 is below min_features
    result = apply(model, SemiStructured24Config(target=Target(types=("Linear", "Conv2d"))))
    notes = " ".join(result.record.notes)
    assert "0 (Conv2d" in notes and "3 (in_features=6" in notes and "4 (in_features=4" in notes
    assert [r["name"] for r in result.record.layers] == ["2"]
    assert result.record.summary["skipped"] == 3
    assert get_mask(result.model[3]) is None and torch.equal(result.model[3].weight, model[3].weight)
    x = torch.randn(2, 1, 8, 8)
    assert result.model(x).shape == model(x).shape


def test_composes_with_an_earlier_magnitude_mask():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(32, 16))
    masked = apply(model, MagnitudePruneConfig(amount=0.6)).model
    both = apply(masked, SemiStructured24Config()).model
    zeros = (_groups(both[0].weight) == 0).sum(-1)
    assert (zeros >= 2).all() and (both[0].weight == 0).float().mean() >= 0.6
    assert not (both[0].weight[masked[0].weight == 0]).any()  # earlier zeros stay zero


def test_sparse_kernel_request_on_cpu_keeps_masked_dense_weights():
    model = nn.Sequential(nn.Linear(64, 64))
    result = apply(model, SemiStructured24Config(to_sparse_kernel=True))
    assert result.record.summary["kernel"] == "masked dense"
    assert any("no CPU kernel" in note for note in result.record.notes)
    assert get_mask(result.model[0]) is not None


def test_mask_helper_on_ties_and_zeros():
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0]])
    mask = two_four_mask(weight)
    assert mask.sum() == 4 and mask[0, 7] and mask[0, :4].sum() == 2


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
def test_sparse_kernel_matches_masked_dense_on_cuda(backend):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128)).half().cuda().eval()
    x = torch.randn(64, 256, device="cuda", dtype=torch.half)
    dense = apply(model, SemiStructured24Config()).model
    result = apply(model, SemiStructured24Config(to_sparse_kernel=True, backend=backend))
    assert result.record.summary["kernel"] in ("cutlass", "cusparselt")
    assert isinstance(result.model[0].weight, torch.sparse.SparseSemiStructuredTensor)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), dense(x), rtol=1e-2, atol=1e-2)
