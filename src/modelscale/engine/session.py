"""One session: the model being changed, the data, example inputs, calibration batches and the loss —
built once, by one loader, for every front door (CLI, recipes, demo, studies, search).

`open_session` takes a model source (a zoo name such as `cnn` or `torchvision:resnet18`, a folder saved
by `save_compressed`, an `nn.Module` or a `ModelBundle`) and a data source (a spec string such as
`digits`, a `DataBundle`, or None). Everything a step needs is derived from it lazily and cached:

- `example_inputs(batch)`: real test inputs when there is data, else synthetic inputs of the model's
  stored input shape (or the explicit `input_shape` override);
- `calibration()`: seeded batches from the train split (static int8, one-shot methods, importance);
- `loss_fn()`: the task's criterion (cross-entropy, per token for language models).

Example::

    from modelscale.engine import open_session, run_steps, technique_step, finetune_step
    session = open_session("runs/cnn", data="digits")
    run_steps(session, [technique_step(MagnitudePruneConfig(amount=0.8)), finetune_step(TrainConfig(epochs=3))])
    session.bundle.model        # the pruned, fine-tuned model; session.bundle.records says what was done
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.data.api import as_data_bundle
from modelscale.models.loading import ModelBundle, example_inputs, load_model

CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 64


@dataclass
class Session:
    """The state every step reads and changes. `bundle` is replaced as steps run."""

    bundle: ModelBundle | None  # None until a baseline step builds or loads the model
    data: Any = None  # DataBundle or None
    seed: int = 0
    input_shape: tuple[int, ...] | None = None  # batch shape of synthetic example inputs (overrides data)
    calibration_batches: int = CALIBRATION_BATCHES
    calibration_batch_size: int = CALIBRATION_BATCH_SIZE
    allow_pickle: bool = False  # the user's own opt-in, for steps that load more models
    progress: bool = True
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> nn.Module:
        return self.bundle.model

    @property
    def task(self) -> str:
        return self.data.task if self.data is not None else "classification"

    def example_inputs(self, batch_size: int | None = None) -> torch.Tensor:
        """A batch of inputs for tracing, MACs and latency (real test inputs when there is data).

        An explicit `input_shape` gives synthetic inputs of that shape (its batch unless `batch_size`)."""
        return example_inputs(self.bundle, self.data, batch_size, input_shape=self.input_shape)

    def calibration(self) -> list[Any] | None:
        """Seeded (inputs, targets) batches from the train split; None without data."""
        if self.data is None:
            return None
        if "calibration" not in self._cache:
            from modelscale.data import make_loader

            loader = make_loader(
                self.data.train, batch_size=self.calibration_batch_size, shuffle=True, seed=self.seed
            )
            self._cache["calibration"] = [b for _, b in zip(range(self.calibration_batches), loader)]
        return self._cache["calibration"]

    def loss_fn(self) -> Any:
        from modelscale.train.losses import loss_for

        return loss_for(self.data)

    def test_loader(self, split: str = "test", batch_size: int = 256) -> Any:
        if self.data is None:
            return None
        from modelscale.data import make_loader

        return make_loader(getattr(self.data, split), batch_size=batch_size, shuffle=False)


def open_session(
    model: Any,
    *,
    data: Any = None,
    seed: int = 0,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    weights: str | None = None,
    allow_pickle: bool = False,
    calibration_batches: int = CALIBRATION_BATCHES,
    progress: bool = True,
    data_options: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> Session:
    """Load the data, then the model sized for it, once; `input_shape` is a batch shape (1,3,32,32).
    `data_options` are the source's options (e.g. {"standardize": True} for npz:)."""
    from modelscale.engine.compat import check_fits, check_input_shape, check_source_kind, model_label

    if calibration_batches < 0:
        raise ModelscaleError(f"calibration batches must be >= 0, got {calibration_batches}")
    if data_options and data is None:
        raise ModelscaleError(
            f"data option(s) {', '.join(sorted(data_options))} need --data (e.g. --data npz:FILE)"
        )
    bundle_data = as_data_bundle(data, seed=seed, **(data_options or {}))
    check_input_shape(input_shape, bundle_data, None, "the model")
    classes = (
        bundle_data.num_classes if bundle_data is not None and bundle_data.task == "classification" else 0
    )
    if num_classes is not None and num_classes < classes:
        raise ModelscaleError(
            f"--num-classes {num_classes} is fewer than the {bundle_data.num_classes} classes of "
            f"--data {bundle_data.name}; drop --num-classes (the data sets it)"
        )
    per_example = tuple(input_shape[1:]) if input_shape else None
    check_source_kind(model, bundle_data)
    try:
        bundle = load_model(
            model,
            data=bundle_data,
            input_shape=per_example,
            num_classes=num_classes,
            weights=weights,
            allow_pickle=allow_pickle,
            seed=seed,
            **model_kwargs,
        )
    except ModelscaleError as exc:
        if input_shape is not None and bundle_data is None and "input_shape" in str(exc):
            raise ModelscaleError(f"--input-shape {','.join(map(str, input_shape))}: {exc}") from None
        raise
    label = model_label(model, bundle)
    _check_standardization(model, bundle_data)
    check_input_shape(input_shape, bundle_data, bundle, label)
    example = None
    if bundle_data is None and input_shape is not None:
        example = example_inputs(bundle, None, 1, input_shape=tuple(input_shape))
    check_fits(bundle, bundle_data, label=label, example=example)
    return Session(
        bundle,
        bundle_data,
        seed=seed,
        input_shape=tuple(input_shape) if input_shape else None,
        calibration_batches=calibration_batches,
        allow_pickle=allow_pickle,
        progress=progress,
    )


def _check_standardization(model: Any, data: Any) -> None:
    """A folder trained on standardized data, evaluated on raw data (or the reverse): say so once."""
    import warnings

    from modelscale.core.errors import ModelscaleWarning
    from modelscale.core.saving import read_manifest

    if data is None or not isinstance(model, str | Path) or not (Path(model) / "modelscale.json").is_file():
        return
    try:
        saved = bool(read_manifest(model).get("meta", {}).get("data_options", {}).get("standardize"))
    except (ModelscaleError, AttributeError):
        return
    now = bool(data.meta.get("standardize"))
    if saved != now:
        fix = "add --standardize" if saved else "drop --standardize"
        warnings.warn(
            f"{model} was trained on {'standardized' if saved else 'raw'} data but --data {data.name} is "
            f"{'standardized' if now else 'raw'}; {fix} so the model sees inputs on the scale it learned",
            ModelscaleWarning,
            stacklevel=2,
        )
