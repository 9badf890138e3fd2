"""Model ↔ data compatibility, checked where a session starts, before any work.

A model fits a data source when it takes the same kind of inputs (token ids for language models,
float tensors otherwise), inputs of the data's per-example shape, and has at least one output per
class. `check_fits` tests what the model's stored spec says and then runs one real example through
the model (eval mode, no gradients), so a mismatch the spec cannot show (a CNN handed a flat table,
a torchvision model handed one channel) is still one line naming both sides and the fix.

Example::

    from modelscale.engine.compat import check_fits
    check_fits(bundle, data, model_label="runs/wine-mlp")   # raises ModelscaleError on a mismatch
"""

from __future__ import annotations

from typing import Any

import torch

from modelscale.core.errors import ModelscaleError

MAX_EXAMPLE_ELEMENTS = 2**26  # one example of more than 64 Mi values is a typo, not a model input


def _shape(shape: Any) -> str:
    return str(tuple(int(d) for d in shape))


def model_label(source: Any, bundle: Any) -> str:
    """A short name for messages: the folder or zoo name the user gave."""
    if isinstance(source, str) and source:
        return source
    return str((bundle.spec or {}).get("name") or type(bundle.model).__name__)


def takes_tokens(bundle: Any) -> bool:
    from modelscale.models.loading import is_token_model

    spec = bundle.spec or {}
    name = str(spec.get("name", ""))
    return is_token_model(name) or (not name and getattr(bundle.model, "vocab_size", None) is not None)


def expected_shape(bundle: Any) -> tuple[int, ...] | None:
    """The per-example input shape the model was built for (float models), when its spec says."""
    shape = (bundle.spec or {}).get("input_shape")
    if shape is None or takes_tokens(bundle):
        return None
    return tuple(int(d) for d in shape)


def check_input_shape(input_shape: tuple[int, ...] | None, data: Any, bundle: Any, label: str) -> None:
    """`--input-shape` (a batch shape) must agree with the data, or with a saved model's inputs."""
    if input_shape is None:
        return
    per_example = tuple(input_shape[1:])
    elements = 1
    for d in per_example:
        elements *= d
    if elements > MAX_EXAMPLE_ELEMENTS:
        raise ModelscaleError(
            f"--input-shape {','.join(map(str, input_shape))} is {elements:,} values per example "
            f"(limit {MAX_EXAMPLE_ELEMENTS:,}); give the model's real input shape, e.g. 1,3,224,224"
        )
    text = ",".join(map(str, input_shape))
    if data is not None and data.task != "lm" and per_example != tuple(data.input_shape):
        raise ModelscaleError(
            f"--input-shape {text} gives examples of shape {_shape(per_example)} but --data {data.name} "
            f"has inputs of shape {_shape(data.input_shape)}; drop --input-shape (the data sets it)"
        )
    if bundle is None:
        return
    if takes_tokens(bundle):
        if len(input_shape) != 2:
            raise ModelscaleError(
                f"{label} takes token ids of shape (batch, sequence) but --input-shape {text} has "
                f"{len(input_shape)} dimensions; use e.g. --input-shape 1,128"
            )
        return
    expected = expected_shape(bundle)
    if expected is not None and per_example != expected:
        raise ModelscaleError(
            f"{label} takes inputs of shape {_shape(expected)} but --input-shape {text} gives "
            f"{_shape(per_example)}; use --input-shape 1,{','.join(map(str, expected))} or drop it"
        )


def check_fits(bundle: Any, data: Any, *, label: str, example: torch.Tensor | None = None) -> None:
    """Raise one line naming the model, the data and the fix unless `bundle`'s model can take `data`.

    Without data, `example` (a batch of inputs) is run through the model instead."""
    if data is not None:
        _check_kind(bundle, data, label)
        expected = expected_shape(bundle)
        if data.task != "lm" and expected is not None and expected != tuple(data.input_shape):
            raise ModelscaleError(
                f"{label} takes inputs of shape {_shape(expected)} but --data {data.name} has inputs of "
                f"shape {_shape(data.input_shape)}; use the data the model was built for, or a model "
                "built for this data"
            )
        outputs = (bundle.spec or {}).get("num_classes")
        if data.task == "classification" and isinstance(outputs, int) and outputs < data.num_classes:
            raise ModelscaleError(
                f"{label} has {outputs} outputs but --data {data.name} has {data.num_classes} classes; "
                f"give --num-classes {data.num_classes} (or more) or use data with at most {outputs} classes"
            )
        if len(data.test) > 0:
            example = data.test[0][0].unsqueeze(0)
        elif len(data.train) > 0:
            example = data.train[0][0].unsqueeze(0)
    if example is None:
        return
    _dry_run(bundle, data, example, label)


def check_source_kind(source: Any, data: Any) -> None:
    """Before building a zoo model: token models need text data, float models need non-text data."""
    from pathlib import Path

    from modelscale.models.loading import is_token_model

    if data is None or not isinstance(source, str) or Path(source).exists() or source.startswith("hf:"):
        return  # hf: models may be text or vision models: their first forward decides
    _kind_error(source, is_token_model(source), data)


def _check_kind(bundle: Any, data: Any, label: str) -> None:
    if str((bundle.spec or {}).get("name", "")).startswith("hf:"):
        return
    _kind_error(label, takes_tokens(bundle), data)


def _kind_error(label: str, tokens: bool, data: Any) -> None:
    if tokens and data.task != "lm":
        raise ModelscaleError(
            f"{label} is a language model that takes token ids, but --data {data.name} gives float inputs "
            f"of shape {_shape(data.input_shape)}; use a text source (text:FILE, pystdlib) or a "
            "float-input model (mlp, cnn, torchvision:NAME)"
        )
    if not tokens and data.task == "lm":
        raise ModelscaleError(
            f"{label} takes float inputs, but --data {data.name} gives byte tokens (a text source); "
            "use a token model (gpt, hf:DIR) for text, or image/table data for this model"
        )


def _dry_run(bundle: Any, data: Any, example: torch.Tensor, label: str) -> None:
    from modelscale.measure._common import model_device

    model = bundle.model
    was_training = model.training
    where = f"--data {data.name}" if data is not None else "--input-shape"
    model.eval()
    try:
        with torch.no_grad():
            out = model(example.to(model_device(model)))
    except Exception as exc:  # noqa: BLE001 - any failure of the first forward is a mismatch to report
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelscaleError(
            f"{label} cannot take the inputs of {where} (one example of shape "
            f"{_shape(example.shape[1:])}: {first[:160]}); use a model built for these inputs"
        ) from None
    finally:
        model.train(was_training)
    out = out[0] if isinstance(out, tuple | list) else getattr(out, "logits", out)
    classification = data is not None and data.task == "classification"
    if (
        classification
        and isinstance(out, torch.Tensor)
        and out.ndim >= 2
        and out.shape[-1] < data.num_classes
    ):
        raise ModelscaleError(
            f"{label} has {out.shape[-1]} outputs but --data {data.name} has {data.num_classes} "
            "classes; use a model built for this data"
        )


def check_technique(technique: Any, bundle: Any, where: str) -> None:
    """A technique that applies only to some model families must not meet another one."""
    from torch import nn

    name = str((bundle.spec or {}).get("name", ""))
    if technique.applies_to == "hf" and not name.startswith("hf:"):
        raise ModelscaleError(
            f"{where}: {technique.name} applies only to transformers models (hf:DIR), not to "
            f"{name or type(bundle.model).__name__}; remove the step or use an hf: model"
        )
    if technique.applies_to == "linear" and not any(isinstance(m, nn.Linear) for m in bundle.model.modules()):
        raise ModelscaleError(
            f"{where}: {technique.name} needs nn.Linear layers and {name or 'the model'} has none; "
            "remove the step or choose a technique for its layers"
        )


def check_exportable(records_or_types: Any, where: str) -> None:
    """An ONNX export must not follow a technique whose layers have no ONNX form."""
    from modelscale.core.registry import get_technique

    for kind in records_or_types:
        kind = getattr(kind, "technique", kind)
        technique = get_technique(kind)
        if not technique.exports_onnx:
            raise ModelscaleError(
                f"{where}: the model has {kind} layers, which have no ONNX form; export the float model "
                "(before that step) and quantize the ONNX file (modelscale export --quantize dynamic|static)"
            )
