"""Truncated-SVD factorization of Linear and Conv2d layers into two thinner layers.

Denton et al., "Exploiting Linear Structure Within Convolutional Networks for Efficient Evaluation"
(2014); Jaderberg et al., "Speeding up Convolutional Neural Networks with Low Rank Expansions" (2014).
A weight W (out × in; a conv's is reshaped to out × in·k·k) is replaced by its best rank-r
approximation W ≈ U_r S_r V_rᵀ = (U_r √S_r)(√S_r V_rᵀ): a Linear becomes in→r (no bias) then r→out
(original bias); a k×k conv becomes a k×k conv to r channels (same stride/padding/dilation) then a
1×1 conv to out channels. It pays off only when r·(in + out) < in·out; other layers are skipped and
listed. r is chosen per layer by `energy` (smallest r with Σᵢ≤ᵣ sᵢ² / Σ sᵢ² ≥ energy), by
`param_ratio` (largest r keeping at most that fraction of the weights) or given as `rank`.
The singular values are split evenly (√S on both factors) so both factors share one scale and
fine-tune well with one learning rate.

Example::

    from modelscale import apply
    from modelscale.techniques.lowrank.svd import LowRankSVDConfig
    result = apply(model, LowRankSVDConfig(rank_by="energy", energy=0.9))
    print(result.record.summary["param_ratio"])        # factorized params / original params
    fit(result.model, data, TrainConfig(epochs=2))      # fine-tune the factors
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.registry import register
from modelscale.core.select import select_modules, set_module


@dataclass(kw_only=True)
class LowRankSVDConfig(TechniqueConfig):
    """Replace Linear/Conv2d weights by truncated-SVD factor pairs."""

    type: ClassVar[str] = "lowrank_svd"
    version: ClassVar[int] = 1

    rank_by: Literal["energy", "param_ratio", "rank"] = param(
        "energy",
        "how each layer's rank is chosen: kept spectral energy, kept param fraction, or a fixed rank",
    )
    energy: float = param(0.9, "rank_by=energy: fraction of squared singular values to keep, in (0, 1]")
    param_ratio: float = param(0.5, "rank_by=param_ratio: fraction of the layer's weights to keep, in (0, 1]")
    rank: int = param(8, "rank_by=rank: the rank (capped at min(out, in·k·k))")
    round_to: int = param(1, "round each rank up to a multiple of this (hardware-friendly sizes); 1 = off")
    force: bool = param(False, "factorize even when the factors have as many params as the layer or more")

    def validate(self) -> None:
        check_range("energy", self.energy, 1e-9, 1.0)
        check_range("param_ratio", self.param_ratio, 1e-9, 1.0)
        check_range("rank", self.rank, 1)
        check_range("round_to", self.round_to, 1)


class LowRankLinear(nn.Module):
    """y = up(down(x)): in→rank without bias, then rank→out with the original layer's bias."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, *, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense product up·down (out × in), for code that reads `.weight` directly."""
        return self.up.weight @ self.down.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankConv2d(nn.Module):
    """y = up(down(x)): a k×k conv to `rank` channels, then a 1×1 conv to out channels with the bias."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__()
        kw = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.down = nn.Conv2d(
            conv.in_channels,
            rank,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=False,
            padding_mode=conv.padding_mode,
            **kw,
        )
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def weight(self) -> torch.Tensor:
        """The dense product as an (out, in, kh, kw) kernel, for code that reads `.weight` directly."""
        down = self.down.weight
        dense = self.up.weight.flatten(1) @ down.flatten(1)
        return dense.view(self.out_channels, *down.shape[1:])

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, rank={self.rank}"


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r whose leading singular values hold at least `energy` of Σ s²."""
    sq = singular_values.detach().double().cpu().pow(2)
    total = float(sq.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    # A relative slack of 1e-12 absorbs round-off in the cumulative sum (energy=1.0 must be reachable).
    index = int(torch.searchsorted(kept, torch.tensor([energy - 1e-12], dtype=kept.dtype))[0])
    return min(index + 1, sq.numel())


def choose_rank(
    singular_values: torch.Tensor,
    rows: int,
    cols: int,
    *,
    rank_by: str,
    energy: float,
    param_ratio: float,
    rank: int,
    round_to: int = 1,
) -> int:
    """The rank for an (rows × cols) weight under one of the three rules, rounded up to `round_to`."""
    full = min(rows, cols)
    if rank_by == "energy":
        r = rank_for_energy(singular_values, energy)
    elif rank_by == "param_ratio":
        r = max(1, math.floor(param_ratio * rows * cols / (rows + cols)))
    else:
        r = rank
    r = math.ceil(r / round_to) * round_to
    return max(1, min(r, full))


def _factors(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(up, down, s): up[:, :r] · down[:r] is the best rank-r approximation of `matrix`, for every r."""
    u, s, vh = torch.linalg.svd(matrix.detach().float(), full_matrices=False)
    root = s.sqrt()
    return u * root, root[:, None] * vh, s


def _skip_reason(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """Why layer `name` cannot be factorized, or None when it can."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, LowRankLinear | LowRankConv2d):
        return "already factorized"
    if isinstance(parent, nn.MultiheadAttention):
        return "MultiheadAttention reads this projection's .weight directly"
    if isinstance(module, nn.Linear):
        if type(module).forward is not nn.Linear.forward:
            return f"{type(module).__name__} overrides forward"
        return None
    if isinstance(module, nn.Conv2d):
        if type(module).forward is not nn.Conv2d.forward:
            return f"{type(module).__name__} overrides forward"
        if module.groups != 1:
            return f"grouped/depthwise conv (groups={module.groups})"
        return None
    return f"{type(module).__name__} is not a Linear or Conv2d"


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register(
    LowRankSVDConfig,
    restore=lambda model, config, record: restore_lowrank(model, record),
    strength="energy",
)
def lowrank_svd(model: nn.Module, config: LowRankSVDConfig, ctx: ApplyContext) -> ChangeRecord:
    """Truncated-SVD factorization of Linear and Conv2d layers (rank by energy, param ratio or fixed)."""
    model_before = _param_count(model)
    layers, skipped, state, folded = [], [], [], []
    for name, module in select_modules(model, config.target):
        reason = _skip_reason(model, name, module)
        if reason is not None:
            skipped.append({"name": name, "reason": reason})
            continue
        weight = module.weight.detach()
        rows, cols = weight.shape[0], weight[0].numel()
        values = {f: config.for_layer(name, f) for f in ("rank_by", "energy", "param_ratio", "rank")}
        up, down, s = _factors(weight.reshape(rows, cols))
        r = choose_rank(s, rows, cols, round_to=config.for_layer(name, "round_to"), **values)
        before, after = rows * cols, r * (rows + cols)
        if after >= before and not config.for_layer(name, "force"):
            skipped.append({"name": name, "reason": f"rank {r} saves nothing ({after} >= {before} weights)"})
            continue
        up, down = up[:, :r], down[:r]
        bias = module.bias
        if isinstance(module, nn.Conv2d):
            kind, new = "conv2d", LowRankConv2d(module, r)
            new.down.weight.data.copy_(down.reshape(new.down.weight.shape))
            new.up.weight.data.copy_(up.reshape(new.up.weight.shape))
        else:
            kind = "linear"
            new = LowRankLinear(
                cols, rows, r, bias=bias is not None, device=weight.device, dtype=weight.dtype
            )
            new.down.weight.data.copy_(down)
            new.up.weight.data.copy_(up)
        if bias is not None:
            new.up.bias.data.copy_(bias.detach())
        new.train(module.training)
        if parametrize.is_parametrized(module):
            folded.append(name)
        set_module(model, name, new)
        sq = s.double().pow(2)
        kept = float(sq[:r].sum() / sq.sum()) if float(sq.sum()) > 0 else 1.0
        layers.append(
            {
                "name": name,
                "kind": kind,
                "shape": list(weight.shape),
                "rank": r,
                "full_rank": min(rows, cols),
                "energy_kept": kept,
                "weights_before": before,
                "weights_after": after,
            }
        )
        state.append({"name": name, "kind": kind, "rank": r})
    before = sum(row["weights_before"] for row in layers)
    after = sum(row["weights_after"] for row in layers)
    notes = [f"skipped {row['name']}: {row['reason']}" for row in skipped]
    if folded:
        notes.append(
            f"{', '.join(folded)}: weight parametrizations (pruning masks, clusters) were folded into "
            "dense factors; re-apply them to the factors if needed"
        )
    if any(isinstance(m, nn.TransformerEncoderLayer) for m in model.modules()) and layers:
        notes.append(
            "nn.TransformerEncoderLayer's inference fast path reads linear1/linear2 .weight: there it "
            "multiplies the dense product, so only training / the slow path uses the thin factors"
        )
    summary = {
        "factorized": len(layers),
        "skipped": len(skipped),
        "skipped_layers": skipped,
        "weights_before": before,
        "weights_after": after,
        "param_ratio": after / before if before else 1.0,
        "model_params_before": model_before,
        "model_params_after": _param_count(model),
        "mean_energy_kept": sum(r["energy_kept"] for r in layers) / len(layers) if layers else 1.0,
        "ranks": {r["name"]: r["rank"] for r in layers},
    }
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=layers,
        summary=summary,
        notes=notes,
        state={"layers": state},
    )


def restore_lowrank(model: nn.Module, record: ChangeRecord) -> None:
    """Swap in empty factor pairs with the recorded ranks so the saved factors load into them."""
    for entry in record.state.get("layers", []):
        name, rank = entry["name"], int(entry["rank"])
        module = model.get_submodule(name)
        weight = module.weight
        if entry["kind"] == "conv2d":
            new = LowRankConv2d(module, rank)
        else:
            new = LowRankLinear(
                module.in_features,
                module.out_features,
                rank,
                bias=module.bias is not None,
                device=weight.device,
                dtype=weight.dtype,
            )
        set_module(model, name, new)
