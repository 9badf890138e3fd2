"""Calibration statistics come from the real tokens only: padding in a batch changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelscale import apply
from modelscale.techniques.oneshot.wanda import WandaConfig
from modelscale.techniques.prune.masks import get_mask


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class PaddedEncoder(nn.Module):
    """Token embedding → residual MLP blocks (a ModuleList, or one bare layer) → masked mean pooling."""

    def __init__(self, blocks: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 16)
        with torch.no_grad():
            self.emb.weight[0] = 50.0 * torch.randn(16)  # the padding id: a huge, odd vector
        if blocks:
            self.blocks = nn.ModuleList(Block() for _ in range(2))
        else:
            self.fc = nn.Linear(16, 16)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        if hasattr(self, "blocks"):
            for block in self.blocks:
                x = block(x)
        else:
            x = x + self.fc(x)
        m = attention_mask[..., None].to(x.dtype)
        return (x * m).sum(1) / m.sum(1)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (8, 12), generator=g)
    lengths = torch.randint(3, 13, (8,), generator=g)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}  # padding id 0 after each sentence


def _unpadded_reference(model: PaddedEncoder, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sequential Wanda masks with each sentence run alone at its own length (no padding exists), float64:
    a block's layers are scored on that block's inputs with the earlier blocks already pruned."""
    ref = copy.deepcopy(model).double()
    layers = {n: m for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
    units: dict[str, list[str]] = {}
    for name in layers:
        units.setdefault(name.rsplit(".", 1)[0] if name.startswith("blocks.") else name, []).append(name)
    masks = {}
    for names in units.values():
        sq = {n: torch.zeros(layers[n].in_features, dtype=torch.float64) for n in names}

        def hook(acc: torch.Tensor):
            def add(_module, args) -> None:  # returns None: a pre-hook's return value would replace the input
                acc.add_(args[0].reshape(-1, args[0].shape[-1]).pow(2).sum(0))

            return add

        handles = [layers[n].register_forward_pre_hook(hook(sq[n])) for n in names]
        with torch.no_grad():
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
                length = int(mask.sum())
                ref(ids[None, :length], mask[None, :length])
        for h in handles:
            h.remove()
        for n in names:
            w = layers[n].weight
            score = w.detach().abs() * sq[n].sqrt()[None, :]
            drop = score.topk(w.shape[1] // 2, dim=1, largest=False).indices
            masks[n] = torch.ones_like(score, dtype=torch.bool).scatter(1, drop, False)
            with torch.no_grad():
                w.mul_(masks[n])
    return masks


@pytest.mark.parametrize("blocks", [True, False], ids=["sequential", "replay"])
def test_padded_tokens_are_left_out_of_the_statistics(blocks):
    model = PaddedEncoder(blocks).eval()
    batch = _batch(seed=1)
    result = apply(copy.deepcopy(model), WandaConfig(sparsity=0.5), calibration=[batch])
    assert result.record.summary["mode"] == ("sequential" if blocks else "replay")
    assert result.record.summary["padding_tokens_excluded"] == int((batch["attention_mask"] == 0).sum()) > 0
    expected = _unpadded_reference(model, batch)
    got = {n: get_mask(m) for n, m in result.model.named_modules() if isinstance(m, nn.Linear)}
    assert set(got) == set(expected)
    for name, keep in expected.items():
        assert torch.equal(got[name], keep), f"{name}: the padded positions leaked into ‖X_j‖"
    # and what the padding holds does not matter: other ids under the mask, the same masks
    other = {**batch, "input_ids": torch.where(batch["attention_mask"] == 1, batch["input_ids"], 7)}
    again = apply(copy.deepcopy(model), WandaConfig(sparsity=0.5), calibration=[other]).model
    for name, module in again.named_modules():
        if isinstance(module, nn.Linear):
            assert torch.equal(get_mask(module), got[name])
