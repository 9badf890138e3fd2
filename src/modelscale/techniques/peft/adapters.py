"""Bottleneck adapters (Houlsby): small residual MLPs inserted after chosen layers or blocks.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP" (2019). After a chosen module with
output h of width d (the last dim of (..., d), or the channels of (B, C, H, W)):

    h' = h + W_up σ(W_down h + b_down) + b_up,     W_down: d → r,  W_up: r → d,

with 1×1 convolutions for image feature maps. W_up and b_up start at zero, so the model's output is
exactly unchanged at insertion (h + 0 = h); the backbone is frozen and only the 2·r·d + r + d adapter
parameters per site (plus the head, by default) train. Each site is a wrapper module
`AdapterWrapped(inner, adapter)` swapped in place of the chosen module — the user's model class is
never subclassed. Children of MultiheadAttention / TransformerEncoderLayer are skipped (their parent
reads `.weight` directly); wrap the whole layer instead, which the default target does. Widths come
from the module (Linear/Conv2d/Embedding), from a probe forward when `example_inputs` are given, else
from the block's last Linear/Conv2d.

Example::

    from modelscale import apply
    from modelscale.techniques.peft.adapters import BottleneckAdapterConfig
    result = apply(model, BottleneckAdapterConfig(bottleneck=8), example_inputs=x)
    assert torch.equal(result.model(x), model(x))       # identity at insertion
    fit(result.model, data, TrainConfig(epochs=10))     # only adapters (and head) train
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

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
    set_module,
    wrap_blocker,
)


@dataclass(kw_only=True)
class BottleneckAdapterConfig(TechniqueConfig):
    """Insert zero-initialised residual bottleneck adapters after the targeted modules; freeze the rest."""

    type: ClassVar[str] = "bottleneck_adapter"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=lambda: Target(
            types=("Linear", "Conv2d", "Conv1D", "TransformerEncoderLayer", "TransformerDecoderLayer")
        ),
        help="modules after which an adapter is inserted (the head is left out when train_head)",
    )
    bottleneck: int = param(8, "adapter width r (d → r → d)")
    activation: Literal["relu", "gelu"] = param("relu", "nonlinearity between the two projections")
    train_head: bool = param(True, "also train the whole classifier head")
    head: str = param("", "name of the head module; '' = the last nn.Linear")
    seed: int = param(0, "seed for the down-projection's initial weights")

    def validate(self) -> None:
        check_range("bottleneck", self.bottleneck, 1)
        check_range("seed", self.seed, 0)


class BottleneckAdapter(nn.Module):
    """x + up(σ(down(x))) over the last dim ("linear") or the channel dim of (B, C, H, W) ("conv")."""

    def __init__(self, dim: int, bottleneck: int, *, kind: str = "linear", activation: str = "relu") -> None:
        super().__init__()
        if kind not in ("linear", "conv"):
            raise ModelscaleError(f"adapter kind must be linear or conv, got {kind!r}")
        self.kind, self.dim, self.bottleneck = kind, dim, bottleneck
        if kind == "conv":
            self.down: nn.Module = nn.Conv2d(dim, bottleneck, 1)
            self.up: nn.Module = nn.Conv2d(bottleneck, dim, 1)
        else:
            self.down = nn.Linear(dim, bottleneck)
            self.up = nn.Linear(bottleneck, dim)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class AdapterWrapped(nn.Module):
    """`inner` followed by `adapter` on its output (the first item when `inner` returns a tuple)."""

    def __init__(self, inner: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.inner = inner
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return self.adapter(out)
        if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
            return type(out)([self.adapter(out[0]), *out[1:]])
        raise ModelscaleError(
            f"adapter after {type(self.inner).__name__}: its output is {type(out).__name__}, not a tensor; "
            "target a module that returns a tensor"
        )


def _probe_shapes(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, tuple[int, ...]]:
    """Output shapes of modules `names` in one no-grad, eval-mode forward of `example_inputs`."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            first = out[0] if isinstance(out, tuple | list) and out else out
            if isinstance(first, torch.Tensor):
                shapes[name] = tuple(first.shape)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs) if isinstance(example_inputs, tuple) else model(example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _site(module: nn.Module, shape: tuple[int, ...] | None) -> tuple[str, int, str] | None:
    """(kind, width, how it was found) for an adapter after `module`, or None when unknown."""
    if isinstance(module, nn.Conv2d):
        return "conv", module.out_channels, "layer"
    if isinstance(module, nn.Linear):
        return "linear", module.out_features, "layer"
    if isinstance(module, nn.Embedding):
        return "linear", module.embedding_dim, "layer"
    if is_conv1d_transformers(module):
        return "linear", int(module.nf), "layer"
    if shape is not None and len(shape) >= 1:
        return ("conv", shape[1], "probe") if len(shape) == 4 else ("linear", shape[-1], "probe")
    last = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if last:
        m = last[-1]
        return (
            ("conv", m.out_channels, "last layer")
            if isinstance(m, nn.Conv2d)
            else (
                "linear",
                m.out_features,
                "last layer",
            )
        )
    return None


def _inside_adapter(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(
        isinstance(model.get_submodule(".".join(parts[:i])), BottleneckAdapter) for i in range(1, len(parts))
    )


def _adapter_param_names(model: nn.Module) -> list[str]:
    """Qualified names of every parameter inside a BottleneckAdapter."""
    return [
        f"{mname}.{pname}"
        for mname, m in model.named_modules()
        if isinstance(m, BottleneckAdapter)
        for pname, _ in m.named_parameters()
    ]


def _wrap(model: nn.Module, entry: dict[str, Any], config: BottleneckAdapterConfig) -> None:
    inner = model.get_submodule(entry["name"])
    ref = next(iter(inner.parameters()), None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + entry["index"])
        adapter = BottleneckAdapter(
            entry["dim"], entry["bottleneck"], kind=entry["kind"], activation=config.activation
        )
    if ref is not None:
        adapter.to(device=ref.device, dtype=ref.dtype)
    set_module(model, entry["name"], AdapterWrapped(inner, adapter.train(inner.training)))


@register(
    BottleneckAdapterConfig,
    restore=lambda model, config, record: restore_adapters(model, config, record),
    strength="bottleneck",
)
def bottleneck_adapter(model: nn.Module, config: BottleneckAdapterConfig, ctx: ApplyContext) -> ChangeRecord:
    """Houlsby bottleneck adapters after chosen layers/blocks (zero-initialised, backbone frozen)."""
    before = count_params(model)
    head = find_head(model, config.head)[0] if config.train_head else None
    chosen, skipped = [], []
    for name, module in select_modules(model, config.target):
        if isinstance(module, AdapterWrapped | BottleneckAdapter) or _inside_adapter(model, name):
            continue
        if head is not None and name == head:
            continue
        reason = wrap_blocker(model, name)
        if reason is not None:
            skipped.append(f"{name}: {reason}")
            continue
        chosen.append((name, module))
    shapes = {}
    if ctx.example_inputs is not None and chosen:
        shapes = _probe_shapes(model, [n for n, _ in chosen], ctx.example_inputs)
    entries = []
    for name, module in chosen:
        site = _site(module, shapes.get(name))
        if site is None:
            skipped.append(f"{name}: output width unknown; pass example_inputs to apply")
            continue
        kind, dim, how = site
        r = int(config.for_layer(name, "bottleneck"))
        entries.append({"name": name, "kind": kind, "dim": dim, "bottleneck": r, "sized_by": how})
    if not entries:
        raise ModelscaleError(
            "bottleneck_adapter found no layer to adapt (" + "; ".join(skipped or ["none selected"]) + "); "
            "change target.types / target.include"
        )
    # Deepest modules first: wrapping a parent never changes the path of a child wrapped before it.
    entries = list(reversed(entries))
    for i, entry in enumerate(entries):
        entry["index"] = i
        _wrap(model, entry, config)
    trainable = _adapter_param_names(model)
    if head is not None:
        trainable += module_param_names(model, head)
    freeze_except(model, trainable)
    layers = [
        {
            **{k: e[k] for k in ("name", "kind", "dim", "bottleneck", "sized_by")},
            "params": 2 * e["dim"] * e["bottleneck"] + e["dim"] + e["bottleneck"],
        }
        for e in reversed(entries)
    ]
    notes = [f"skipped {s}" for s in skipped]
    notes += common_notes(model, head)
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=layers,
        summary={"adapters": len(entries), "head": head, **param_summary(model, before)},
        notes=notes,
        state={
            "sites": [{k: e[k] for k in ("name", "kind", "dim", "bottleneck", "index")} for e in entries],
            "trainable": sorted(set(trainable)),
        },
    )


def restore_adapters(model: nn.Module, config: BottleneckAdapterConfig, record: ChangeRecord) -> None:
    """Insert empty adapters at the recorded sites (same order) and re-freeze, so saved weights load."""
    for entry in record.state["sites"]:
        _wrap(model, entry, config)
    freeze_except(model, record.state["trainable"])
