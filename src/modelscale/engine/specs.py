"""The recipe sections that are plain configs (data, measure, export) and the model section.

Each is validated by the shared `Config` machinery (types, Literal choices, unknown keys, `validate()`),
so recipe errors read like every other config error, prefixed with the field path by `recipe.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from modelscale.core.config import Config, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.data.augment import AugmentConfig

MAX_MEASURE_BATCH = 1 << 16  # a latency batch beyond this is a typo (and would not fit in memory)
METRICS = ("params", "size", "macs", "accuracy", "latency", "memory")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


@dataclass(kw_only=True)
class DataSection(Config):
    """Where the data comes from and how it is split (arguments of `modelscale.data.load_data`)."""

    type: ClassVar[str] = "data"
    source: str = param("digits", "data source spec: digits, cifar10:<dir>, pystdlib, text:<path> ...")
    seed: int = param(0, "seed of the split (and of the subsample with data_fraction < 1)")
    val_fraction: float = param(0.15, "fraction held out for validation")
    test_fraction: float = param(0.2, "fraction held out for the final test")
    data_fraction: float = param(1.0, "fraction of the train split kept (val and test unchanged)")
    block_size: int = param(128, "language-model window length in bytes")
    max_bytes: int | None = param(None, "cap on the bytes read from text sources")
    augment: dict[str, Any] | None = param(None, "train-time image augmentation: AugmentConfig fields")
    options: dict[str, Any] = param(factory=dict, help="source-specific options (image_size, ...)")

    def validate(self) -> None:
        from modelscale.data import list_sources
        from modelscale.data.splits import check_fractions

        head = self.source.partition(":")[0]
        if head not in list_sources():
            raise ModelscaleError(f"source must be one of {', '.join(list_sources())}; got {self.source!r}")
        check_range("seed", self.seed, 0)
        check_fractions(self.val_fraction, self.test_fraction, self.data_fraction)
        check_range("block_size", self.block_size, 2)
        if self.max_bytes is not None:
            check_range("max_bytes", self.max_bytes, 1)
        self.augment_config()

    def augment_config(self) -> AugmentConfig | None:
        if self.augment is None:
            return None
        try:
            return AugmentConfig.from_dict(self.augment)
        except ModelscaleError as exc:
            raise ModelscaleError(f"augment: {exc}") from None

    def load(self) -> Any:
        from modelscale.data import load_data

        return load_data(
            self.source,
            seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            data_fraction=self.data_fraction,
            block_size=self.block_size,
            max_bytes=self.max_bytes,
            augment=self.augment_config(),
            **self.options,
        )


@dataclass(kw_only=True)
class MeasureSection(Config):
    """What is measured after every step (each device × dtype × batch size is one profile)."""

    type: ClassVar[str] = "measure"
    devices: tuple[str, ...] = param(("cpu",), "devices to measure on: cpu, cuda, cuda:N")
    batch_sizes: tuple[int, ...] = param((1,), "batch sizes for latency (accuracy uses the first)")
    dtypes: tuple[str, ...] = param(("float32",), "dtypes to measure in: float32, bfloat16, float16")
    metrics: tuple[str, ...] = param(
        ("params", "size", "macs", "accuracy", "latency"), f"what to record: {', '.join(METRICS)}"
    )
    warmup: int = param(3, "latency warm-up calls")
    repeats: int = param(20, "latency timed calls (modest: the median is reported)")
    threads: int | None = param(None, "CPU threads while measuring; None keeps the current setting")
    eval_batch_size: int = param(256, "batch size of the test loader used for accuracy")
    max_batches: int | None = param(None, "cap on test batches for accuracy (large text test sets)")

    def validate(self) -> None:
        from modelscale.measure._common import DTYPES

        for label, values in (("devices", self.devices), ("batch_sizes", self.batch_sizes)):
            if not values:
                raise ModelscaleError(f"{label} must list at least one value")
        for d in self.devices:
            if not _DEVICE.match(d):
                raise ModelscaleError(f"devices must be cpu, cuda or cuda:N; got {d!r}")
        for b in self.batch_sizes:
            check_range("batch_sizes", b, 1, MAX_MEASURE_BATCH)
        for t in self.dtypes:
            if t not in DTYPES:
                raise ModelscaleError(f"dtypes must be among {', '.join(DTYPES)}; got {t!r}")
        for m in self.metrics:
            if m not in METRICS:
                raise ModelscaleError(f"metrics must be among {', '.join(METRICS)}; got {m!r}")
        check_range("warmup", self.warmup, 0, 100_000)
        check_range("repeats", self.repeats, 1, 1_000_000)
        check_range("eval_batch_size", self.eval_batch_size, 1, MAX_MEASURE_BATCH)
        for label in ("threads", "max_batches"):
            if getattr(self, label) is not None:
                check_range(label, getattr(self, label), 1)


@dataclass(kw_only=True)
class ExportConfig(Config):
    """An export step: write the current model to a deployable file."""

    type: ClassVar[str] = "export"
    format: Literal["onnx"] = param("onnx", "file format")
    dynamic_batch: bool = param(True, "make the batch dimension symbolic")
    opset: int | None = param(None, "ONNX opset; None for the exporter's default")
    exporter: Literal["auto", "dynamo", "torchscript"] = param("auto", "which torch exporter to use")


@dataclass
class ModelSection:
    """A zoo model (`name` + `kwargs`, sized for the data) or a saved model folder (`load`)."""

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    load: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load} if self.load else {"name": self.name, "kwargs": dict(self.kwargs)}
