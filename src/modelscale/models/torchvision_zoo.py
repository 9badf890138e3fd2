"""`torchvision:<name>`: any torchvision classification model, randomly initialised, adapted to the input.

Built with `torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)`
(never downloads; pretrained weights come from a local file through `weights=`). Adaptations, each
recorded in `model.modelscale_notes`:

- ResNet family with input height or width < 64: the usual CIFAR stem — a 3×3 stride-1 first conv and
  no max-pool, so a 32×32 image is not reduced to 1×1 before the last stage.
- input channels != 3: the first 3-channel convolution is replaced by one with the right channels.
- `vit_*` with a square input other than 224: `image_size` is set to the input size.

Always, so that the model is the architecture its published weights describe and it saves, reloads and
trains like every other: GoogLeNet and Inception v3 are built without their auxiliary heads (a
published checkpoint's head keys are dropped on load), and MNASNet loads state dicts that carry no
version metadata (see `models/torchvision_compat.py`). `published(name)` gives torchvision's own
figures (parameters, GMACs, resolution) for a model, read from its weights' metadata.

`width` and `depth` must stay 1.0 (torchvision architectures have fixed sizes; pick a bigger or smaller
variant by name instead).

Example::

    from modelscale.models import build_model
    model = build_model("torchvision:resnet18", num_classes=10, input_shape=(3, 32, 32))
    model.modelscale_notes   # ['resnet stem adapted to small inputs: conv1 3x3 stride 1, no maxpool']
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models.registry import ModelArgs, register_model

SMALL_INPUT = 64  # below this height or width a ResNet gets the CIFAR stem
AUX_HEAD_MODELS = ("googlenet", "inception_v3")  # built without their auxiliary training heads


def _first_rgb_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(qualified name, conv) of the first Conv2d reading 3 channels, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    return None


def _conv_like(conv: nn.Conv2d, in_channels: int, **overrides: Any) -> nn.Conv2d:
    settings = {
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
    }
    settings.update(overrides)
    return nn.Conv2d(in_channels, conv.out_channels, **settings)


def _adapt(model: nn.Module, args: ModelArgs, notes: list[str]) -> None:
    from torchvision.models import ResNet

    channels, height, width = args.input_shape
    if isinstance(model, ResNet) and min(height, width) < SMALL_INPUT:
        model.conv1 = _conv_like(model.conv1, channels, kernel_size=3, stride=1, padding=1)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        notes.append("resnet stem adapted to small inputs: conv1 3x3 stride 1, no maxpool")
        if channels != 3:
            notes.append(f"first conv reads {channels} input channels instead of 3")
        return
    if channels != 3:
        found = _first_rgb_conv(model)
        if found is None:
            raise ModelscaleError(
                f"cannot adapt this torchvision model to {channels} input channels (no 3-channel first conv); "
                "use 3-channel inputs"
            )
        name, conv = found
        parent_name, _, attr = name.rpartition(".")
        new = _conv_like(conv, channels)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        setattr(model.get_submodule(parent_name), attr, new)
        notes.append(f"first conv ({name}) reads {channels} input channels instead of 3")


@register_model(
    "torchvision",
    prefix=True,
    usage="torchvision:<name>",
    summary="any torchvision classification model (random init; CIFAR stem for small-input ResNets)",
)
def build_torchvision(args: ModelArgs, arg: str, **kwargs: Any) -> nn.Module:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)
    if arg not in valid:
        close = [n for n in valid if n.startswith(arg[:3])] or valid
        raise ModelscaleError(
            f"unknown torchvision model {arg!r}; e.g. {', '.join(close[:8])} "
            f"(torchvision.models.list_models() lists all {len(valid)})"
        )
    if args.width != 1.0 or args.depth != 1.0:
        raise ModelscaleError(
            "width and depth multipliers do not apply to torchvision models; choose a larger or "
            "smaller variant by name (e.g. resnet18 vs resnet50)"
        )
    if len(args.input_shape) != 3:
        raise ModelscaleError(
            f"torchvision models need input_shape (channels, height, width), got {args.input_shape}"
        )
    notes: list[str] = []
    _, height, width = args.input_shape
    if arg.startswith("vit_") and "image_size" not in kwargs and height == width and height != 224:
        kwargs["image_size"] = height
        notes.append(f"vit image_size set to {height}")
    if args.dropout > 0:
        kwargs.setdefault("dropout", args.dropout)
    if arg in AUX_HEAD_MODELS:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)  # torchvision's init, stated (it warns when left unset)
    try:
        model = tvm.get_model(arg, weights=None, num_classes=args.num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if args.dropout > 0 and "dropout" in first:
            raise ModelscaleError(
                f"torchvision:{arg} has no dropout option; build it with dropout=0"
            ) from None
        raise ModelscaleError(f"torchvision:{arg} rejected its options: {first}") from None
    _adapt(model, args, notes)
    _make_loadable(model)
    model.modelscale_notes = notes
    return model


def _make_loadable(model: nn.Module) -> None:
    from torchvision.models import MNASNet as TorchvisionMNASNet

    from modelscale.models import torchvision_compat

    if type(model) is TorchvisionMNASNet:
        model.__class__ = torchvision_compat.MNASNet  # adds no state: only how a state dict loads
    if not getattr(model, "aux_logits", True):
        model.register_load_state_dict_pre_hook(torchvision_compat.drop_aux_heads)


def published(name: str) -> dict[str, Any]:
    """torchvision's published figures for classifier `name`, from its weights' metadata (no download).

    The weights entry evaluated at 224 pixels when there is one (what `weights=None` builds), else the
    first; returns {"weights", "resolution", "params", "gmacs"} (torchvision's `_ops` field: GMACs,
    though the docs call it GFLOPS)."""
    import torchvision.models as tvm

    entries = list(tvm.get_model_weights(name))
    sizes = [int(e.transforms().crop_size[0]) for e in entries]
    i = sizes.index(224) if 224 in sizes else 0
    meta = entries[i].meta
    return {
        "weights": str(entries[i]),
        "resolution": sizes[i],
        "params": int(meta["num_params"]),
        "gmacs": float(meta["_ops"]),
    }
