"""Attention layers for structured pruning: find them, keep their head bookkeeping right, remove heads.

Two kinds are recognised:

- ``nn.MultiheadAttention``: Torch-Pruning ties its width to its input/output (residual) width.
- Attention modules written the usual way (the zoo's `gpt`, Hugging Face BERT-style): a module with an
  int head-count attribute (`num_heads`, `n_head`, `n_heads`, `num_attention_heads`), an int head-width
  attribute (`head_dim`, `attention_head_size`, `head_size`) and Linear children `q_proj`/`k_proj`/
  `v_proj` (or `query`/`key`/`value`, or one fused `qkv`/`c_attn`/`Wqkv`/`qkv_proj`).

Channels of a projection are pruned evenly from every head (``out_channel_groups``), and after pruning
`head_dim` (and `all_head_size`) are reset from the new widths so `forward` reshapes correctly.
Whole-head removal: head h is channels [h·d, (h+1)·d) of the attention width; its score is the mean
of the channel scores; the lowest ``ceil(ratio · heads)`` heads go.

Example::

    units = find_attention(model)
    groups = channel_groups(units)            # {layer: heads} for Torch-Pruning
    ...prune...
    sync_attention(units)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

_HEAD_ATTRS = ("num_heads", "n_head", "n_heads", "num_attention_heads")
_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")
_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
_FUSED = ("qkv", "c_attn", "Wqkv", "qkv_proj")


@dataclass
class AttentionUnit:
    module: nn.Module
    projections: list[nn.Module]  # layers whose output channels are the attention width
    heads_attr: str
    dim_attr: str
    fused: bool  # one projection holds q, k and v

    @property
    def heads(self) -> int:
        return getattr(self.module, self.heads_attr)

    def width(self) -> int:
        first = self.projections[0]
        if isinstance(first, nn.MultiheadAttention):
            return first.embed_dim
        return first.out_features if isinstance(first, nn.Linear) else first.nf

    def group_count(self) -> int:
        return self.heads * (3 if self.fused else 1)


def find_attention(model: nn.Module) -> list[AttentionUnit]:
    units = []
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            units.append(AttentionUnit(m, [m], "num_heads", "head_dim", False))
            continue
        own = vars(m)
        heads = next((a for a in _HEAD_ATTRS if type(own.get(a)) is int), None)
        dim = next((a for a in _DIM_ATTRS if type(own.get(a)) is int), None)
        if heads is None or dim is None:
            continue
        children = dict(m.named_children())
        for names in _SEPARATE:
            if all(isinstance(children.get(n), nn.Linear) for n in names):
                units.append(AttentionUnit(m, [children[n] for n in names], heads, dim, False))
                break
        else:
            fused = [children[n] for n in _FUSED if _is_projection(children.get(n))]
            if fused:
                units.append(AttentionUnit(m, fused[:1], heads, dim, True))
    return units


def _is_projection(m: nn.Module | None) -> bool:
    """A Linear, or Hugging Face's transposed-weight `Conv1D` (GPT-2)."""
    return isinstance(m, nn.Linear) or (
        type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int)
    )


def channel_groups(units: list[AttentionUnit]) -> dict[nn.Module, int]:
    """Torch-Pruning `out_channel_groups`: every head loses the same channels."""
    return {p: u.group_count() for u in units for p in u.projections}


def sync_attention(units: list[AttentionUnit]) -> None:
    """Reset head width (and `all_head_size`) from the pruned projection widths."""
    for u in units:
        head_dim = u.width() // u.group_count()
        setattr(u.module, u.dim_attr, head_dim)
        own = vars(u.module)
        if type(own.get("all_head_size")) is int:
            u.module.all_head_size = u.heads * head_dim
        if u.fused and type(own.get("split_size")) is int:
            u.module.split_size = u.width() // 3  # GPT-2 splits the fused projection into q, k, v


def prune_heads(
    pruner, units: list[AttentionUnit], start_heads: dict, ratio: float, ignored: list
) -> list[str]:
    """Remove whole heads so each attention layer has lost ``ceil(ratio · start)`` of its heads.

    Units whose projections share one group (all nn.MultiheadAttention layers on one residual
    stream) lose the same heads. Fused q/k/v projections are left alone.
    """
    dg, notes = pruner.DG, []
    owner = {id(p): u for u in units for p in u.projections}
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=pruner.root_module_types):
        found = [
            owner.get(id(dep.target.module)) for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)
        ]
        members = list({id(u.module): u for u in found if u is not None}.values())
        if not members:
            continue
        if any(u.fused for u in members):
            continue  # fused q/k/v projections are left whole (see structured.py)
        heads = {u.heads for u in members}
        widths = {u.width() for u in members}
        if len(heads) != 1 or len(widths) != 1:
            notes.append("attention layers sharing a width have different head counts: heads kept")
            continue
        n_heads, width = heads.pop(), widths.pop()
        start = max(start_heads[id(u.module)] for u in members)
        remove = min(math.ceil(ratio * start) - (start - n_heads), n_heads - 1)
        if remove <= 0:
            continue
        scores = pruner.estimate_importance(group)
        if scores is None or scores.numel() != width:
            continue
        head_dim = width // n_heads
        drop = torch.topk(scores.view(n_heads, head_dim).mean(1), remove, largest=False).indices.tolist()
        idxs = sorted(c for h in drop for c in range(h * head_dim, (h + 1) * head_dim))
        for u in members:
            setattr(u.module, u.heads_attr, n_heads - remove)  # the MHA pruner checks the new count
        root = group[0].dep
        cut = dg.get_pruning_group(root.target.module, root.handler, idxs)
        if dg.check_pruning_group(cut):
            cut.prune()
        else:
            for u in members:
                setattr(u.module, u.heads_attr, n_heads)
        sync_attention(members)
    return notes
