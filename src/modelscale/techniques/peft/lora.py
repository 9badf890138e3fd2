"""LoRA: low-rank updates to frozen Linear, Conv and Embedding layers of any nn.Module (via Hugging Face peft).

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021). A frozen weight W (d_out × d_in)
gets a trainable low-rank update,

    y = W x + (α / r) · B A x,     A: r × d_in (random init),  B: d_out × r (zero init),

so the model is unchanged at insertion and each layer trains r·(d_in + d_out) parameters. For
deployment `merge_lora` folds W ← W + (α/r)·B A back into plain layers (no extra latency). The
layers are injected by `peft.inject_adapter_in_model` with `target_modules` set to exactly the
layers our target selects, so this works on any module tree, not only transformers models. State
dict keys become `<layer>.base_layer.weight`, `<layer>.lora_A.default.weight`, ...; restoring a
saved model re-injects the same structure (recorded layer names, ranks) before loading weights.
Children of MultiheadAttention / TransformerEncoderLayer are skipped: those parents read `.weight`
directly (always, or on the inference fast path), which would silently bypass the update, and so are
layers whose parent's forward reads `self.<layer>.weight` itself (torchvision's Swin). Grouped and
depthwise convolutions are skipped too (peft needs the rank divisible by the groups and cannot merge
into them); every skipped layer is listed in the record (`summary["skipped"]`, reasons in the notes).
The classifier head (the last Linear) is trained fully (by default) instead of through LoRA; a model
without a Linear (SqueezeNet) has its output conv adapted like the others. Needs `pip install
modelscale[peft]`.

Example::

    from modelscale import apply
    from modelscale.techniques.peft.lora import LoRAConfig, merge_lora
    result = apply(model, LoRAConfig(rank=8, alpha=16))
    fit(result.model, data, TrainConfig(epochs=10))
    plain = merge_lora(result.model)          # ordinary Linear/Conv2d layers, same outputs
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.core.registry import register
from modelscale.core.select import Target, select_modules
from modelscale.techniques.peft._common import (
    common_notes,
    count_params,
    find_head,
    freeze_except,
    is_conv1d_transformers,
    module_param_names,
    param_summary,
    reads_weight_directly,
    set_module,
    wrap_blocker,
)

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
GROUPED = (
    "grouped or depthwise convolution (groups > 1): peft adapts it only with a rank divisible by the groups "
    "and cannot merge the update into it"
)


@dataclass(kw_only=True)
class LoRAConfig(TechniqueConfig):
    """Add trainable rank-r updates (α/r)·B A to the targeted layers; freeze everything else."""

    type: ClassVar[str] = "lora"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=lambda: Target(types=("Linear", "Conv2d", "Embedding", "Conv1D")),
        help="layers that get a LoRA update (Linear, Conv1d/2d/3d, Embedding, transformers Conv1D; "
        "the head is left out when train_head)",
    )
    rank: int = param(8, "rank r of the update B·A")
    alpha: float = param(16.0, "scale numerator: the update is multiplied by alpha / rank")
    dropout: float = param(0.0, "dropout on the LoRA branch's input during training, in [0, 1)")
    train_head: bool = param(True, "train the whole classifier head instead of adapting it")
    head: str = param("", "name of the head module; '' = the last nn.Linear")
    seed: int = param(0, "seed for the random init of A")

    def validate(self) -> None:
        check_range("rank", self.rank, 1)
        check_range("alpha", self.alpha, 0.0)
        check_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        check_range("seed", self.seed, 0)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ModelscaleError("LoRA needs the peft package; pip install modelscale[peft]") from None
    return peft


def _lora_layer_cls() -> type:
    _peft()
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def _pattern(names: list[str]) -> str:
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _inject(model: nn.Module, layers: list[dict[str, Any]], config: LoRAConfig) -> None:
    """Inject LoRA into exactly the recorded layers with their ranks and alphas (seeded init)."""
    peft = _peft()
    names = [e["name"] for e in layers]
    # peft matches pattern keys as (.*\.)?(key)$; a leading ^ pins them to the full layer name.
    rank_pattern = {"^" + re.escape(e["name"]): e["rank"] for e in layers if e["rank"] != config.rank}
    alpha_pattern = {"^" + re.escape(e["name"]): e["alpha"] for e in layers if e["alpha"] != config.alpha}
    lora_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=_pattern(names),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft warns when it flips fan_in_fan_out for transformers' Conv1D; that is the right setting.
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        torch.manual_seed(config.seed)
        try:
            peft.inject_adapter_in_model(lora_config, model)
        except (ValueError, TypeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelscaleError(f"peft could not add LoRA to {', '.join(names)}: {first}") from None


def _trainable(model: nn.Module, head: str | None) -> list[str]:
    names = [n for n, _ in model.named_parameters(remove_duplicate=False) if "lora_" in n]
    return names + (module_param_names(model, head) if head is not None else [])


def _names_by_tensor(model: nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), []).append(n)
    return out


def _tied_elsewhere(names: dict[int, list[str]], name: str, module: nn.Module) -> list[str]:
    """Names outside module `name` under which its weight is also registered (tied weights)."""
    weight = getattr(module, "weight", None)
    return [n for n in names.get(id(weight), []) if not n.startswith(f"{name}.")]


def _skip_reason(
    model: nn.Module, name: str, module: nn.Module, layer_cls: type, names: dict[int, list[str]]
) -> str | None:
    if isinstance(module, layer_cls) or ".base_layer" in f".{name}" or "lora_" in name:
        return "already a LoRA layer"
    if not isinstance(module, SUPPORTED) and not is_conv1d_transformers(module):
        return f"{type(module).__name__} is not a Linear, Conv1d/2d/3d, Embedding or transformers Conv1D"
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        return GROUPED
    reader = reads_weight_directly(model, name)
    if reader is not None:
        return f"its parent {reader}'s forward reads its .weight directly, so the update would be bypassed"
    tied = _tied_elsewhere(names, name, module)
    if tied:
        return f"its weight is tied to {', '.join(tied)}; merging an update would change that layer too"
    return wrap_blocker(model, name)


@register(
    LoRAConfig,
    restore=lambda model, config, record: restore_lora(model, config, record),
    strength="rank",
)
def lora(model: nn.Module, config: LoRAConfig, ctx: ApplyContext) -> ChangeRecord:
    """LoRA (via peft) on the targeted Linear/Conv/Embedding layers; head trained fully by default."""
    layer_cls = _lora_layer_cls()
    before = count_params(model)
    notes: list[str] = []
    head = None
    if config.train_head and (config.head or any(isinstance(m, nn.Linear) for m in model.modules())):
        head = find_head(model, config.head)[0]
    elif config.train_head:
        notes.append("no nn.Linear head to train fully: the output layer is adapted like the others")
    entries, skipped, names = [], {}, _names_by_tensor(model)
    for name, module in select_modules(model, config.target):
        if name == head:
            continue
        reason = _skip_reason(model, name, module, layer_cls, names)
        if reason is not None:
            if reason != "already a LoRA layer":
                skipped[name] = reason
            continue
        rank, alpha = int(config.for_layer(name, "rank")), float(config.for_layer(name, "alpha"))
        entries.append({"name": name, "kind": type(module).__name__, "rank": rank, "alpha": alpha})
    if not entries:
        raise ModelscaleError(
            "lora found no layer to adapt ("
            + ("; ".join(_skip_notes(skipped)) if skipped else "none selected")
            + "); change target.types / target.include"
        )
    _inject(model, entries, config)
    trainable = _trainable(model, head)
    freeze_except(model, trainable)
    modules = dict(model.named_modules())
    for e in entries:
        e["lora_params"] = sum(p.numel() for n, p in modules[e["name"]].named_parameters() if "lora_" in n)
    notes += _skip_notes(skipped)
    masked = [e["name"] for e in entries if parametrize.is_parametrized(modules[e["name"]].get_base_layer())]
    if masked:
        notes.append(
            f"{', '.join(masked)} keep their weight parametrizations (masks/clusters); the LoRA update is dense "
            "and merge_lora needs them baked first"
        )
    notes += common_notes(model, head)
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=entries,
        summary={
            "adapted": len(entries),
            "skipped": sorted(skipped),
            "head": head,
            **param_summary(model, before),
        },
        notes=notes,
        state={
            "layers": [{k: e[k] for k in ("name", "rank", "alpha")} for e in entries],
            "trainable": sorted(set(trainable)),
        },
    )


def _skip_notes(skipped: dict[str, str], shown: int = 6) -> list[str]:
    """One line per reason, the cause first, then a few of the layers (all are in summary["skipped"])."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    lines = []
    for reason, layers in by_reason.items():
        more = f" and {len(layers) - shown} more" if len(layers) > shown else ""
        lines.append(f"skipped {len(layers)} layer(s), {reason}: {', '.join(layers[:shown])}{more}")
    return lines


def restore_lora(model: nn.Module, config: LoRAConfig, record: ChangeRecord) -> None:
    """Re-inject the recorded LoRA layers (same names, ranks, alphas) and re-freeze, so saved weights load."""
    _inject(model, record.state["layers"], config)
    freeze_except(model, record.state["trainable"])


def merge_lora(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A plain model: every LoRA layer folded into its base layer (W ← W + (α/r)·B A), all params trainable."""
    layer_cls = _lora_layer_cls()
    target = model if inplace else copy.deepcopy(model)
    found = [(n, m) for n, m in target.named_modules() if isinstance(m, layer_cls)]
    if not found:
        raise ModelscaleError("merge_lora found no LoRA layers; apply LoRAConfig first")
    names = _names_by_tensor(target)
    for name, module in found:
        tied = _tied_elsewhere(names, f"{name}.base_layer", module.get_base_layer())
        if tied:
            raise ModelscaleError(
                f"{name}'s weight is tied to {', '.join(tied)}, which merging would change too; "
                "untie the weights or leave this layer out of the LoRA target"
            )
    masked = [n for n, m in found if parametrize.is_parametrized(m.get_base_layer())]
    if masked:
        raise ModelscaleError(
            f"{', '.join(masked)} carry weight parametrizations (pruning masks, clusters), which peft cannot merge "
            "into; bake them first (modelscale.techniques.prune.masks.bake_masks) — the merged weight is dense"
        )
    for name, module in found:
        module.merge()
        set_module(target, name, module.get_base_layer())
    if "peft_config" in vars(target):
        del target.peft_config
    for p in target.parameters():
        p.requires_grad_(True)
    return target
