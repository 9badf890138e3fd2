"""Post-training int8 quantization of an ONNX file with ONNX Runtime's quantization tools.

Two flavours, both writing a new ONNX file (atomically) and leaving the source untouched:

- `quantize_onnx_dynamic(src, dst)`: weights are stored as int8 (`QuantType.QInt8`), activations are
  quantized on the fly per batch from their observed range; no calibration data. Good for
  MatMul-heavy models (transformers, MLPs).
- `quantize_onnx_static(src, dst, batches)`: QDQ format (QuantizeLinear/DequantizeLinear pairs that
  ORT fuses into int8 kernels). Activation ranges come from calibration batches, by `minmax` (observed
  extremes), `entropy` (the range minimising the KL divergence between the float and int8
  histograms) or `percentile` (clip at the 99.999th percentile of |x|). Weights are int8, per output
  channel by default.

Affine quantization maps a real x to q = clamp(round(x / s) + z, qmin, qmax) with scale
s = (max - min) / (qmax - qmin) and zero point z (0 for symmetric int8 weights); x ≈ s·(q - z).

Before quantizing, the model goes through ORT's `quant_pre_process` (symbolic shape inference, graph
optimisation such as Conv+BatchNorm folding, ONNX shape inference); if a step fails on an unusual
graph it is retried without symbolic shapes, then skipped; the metadata records what ran.

Example::

    from modelscale.export import quantize_onnx_dynamic, quantize_onnx_static
    quantize_onnx_dynamic("model.onnx", "model.int8.onnx")
    batches = [x for x, _ in make_loader(data.train, batch_size=32, shuffle=False)][:8]
    quantize_onnx_static("model.onnx", "model.qdq.onnx", batches, method="percentile")
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.core.io import atomic_path
from modelscale.export.onnx_export import first_line, require, set_onnx_metadata

METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("int8", "uint8")


def quantize_onnx_dynamic(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    per_channel: bool = False,
    op_types: Sequence[str] | None = None,
    preprocess: bool = True,
) -> Path:
    """Dynamic int8 quantization (int8 weights, activations quantized at run time); returns `dst`.

    `op_types`: ONNX op types to quantize (None: ORT's default set, e.g. MatMul, Conv, Gather).
    """
    src, dst = _check_paths(src, dst)
    require("onnx", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _staging(dst) as (work, staged):
        model_in, pre_note = _preprocess(src, work, preprocess)
        try:
            with _quiet():
                quantize_dynamic(
                    str(model_in),
                    str(staged),
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                    op_types_to_quantize=list(op_types) if op_types else None,
                )
        except Exception as exc:  # noqa: BLE001 - ORT raises many types
            raise ModelscaleError(
                f"ONNX Runtime dynamic quantization of {src} failed: {first_line(exc)}"
            ) from None
        meta = {
            "quantization": f"dynamic int8 weights (QInt8, per_channel={per_channel})",
            "preprocess": pre_note,
        }
        _finish(staged, dst, meta)
    return dst


def quantize_onnx_static(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration_batches: Iterable[Any],
    *,
    per_channel: bool = True,
    method: str = "minmax",
    activation_type: str = "int8",
    max_batches: int | None = None,
    preprocess: bool = True,
) -> Path:
    """Static int8 quantization in QDQ format, calibrated on `calibration_batches`; returns `dst`.

    Batches are tensors/arrays, `(x, y)` pairs (x is used), tuples of inputs, or dicts keyed by input
    name; a DataLoader works. `method`: minmax | entropy | percentile. `activation_type`: int8 (S8S8)
    or uint8 (U8S8). At most `max_batches` batches are read (None: all).
    """
    if method not in METHODS:
        raise ModelscaleError(f"unknown calibration method {method!r}; valid options: {', '.join(METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise ModelscaleError(
            f"unknown activation_type {activation_type!r}; valid options: {', '.join(ACTIVATION_TYPES)}"
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ModelscaleError(f"max_batches must be an integer >= 1 or None, got {max_batches!r}")
    src, dst = _check_paths(src, dst)
    require("onnx", "onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibration = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    feeds = _calibration_feeds(src, calibration_batches, max_batches)
    with _staging(dst) as (work, staged):
        model_in, pre_note = _preprocess(src, work, preprocess)
        extra: dict[str, Any] = {}
        calib_note = method
        try:
            with _quiet():
                if method == "entropy":
                    extra, calib_note = _entropy_cache(model_in, feeds, work, quantize_static)
                quantize_static(
                    str(model_in),
                    str(staged),
                    _reader(feeds),
                    **extra,
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=calibration,
                )
        except Exception as exc:  # noqa: BLE001
            raise ModelscaleError(
                f"ONNX Runtime static quantization of {src} failed: {first_line(exc)}"
            ) from None
        meta = {
            "quantization": (
                f"static QDQ int8 ({calib_note} calibration on {len(feeds)} batches, activations {activation_type}, "
                f"per_channel={per_channel})"
            ),
            "preprocess": pre_note,
        }
        _finish(staged, dst, meta)
    return dst


# ----------------------------------------------------------------------------------------- internals


def _check_paths(src: Any, dst: Any) -> tuple[Path, Path]:
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ModelscaleError(f"ONNX file not found: {src}; export the model first")
    if dst.is_dir():
        raise ModelscaleError(f"{dst} is a folder; pass a file path such as {dst / 'model.int8.onnx'}")
    return src, dst


@contextlib.contextmanager
def _staging(dst: Path) -> Iterator[tuple[Path, Path]]:
    """A private work folder beside `dst` and the staged output path inside it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as work:
        yield Path(work), Path(work) / dst.name


def _finish(staged: Path, dst: Path, meta: dict[str, str]) -> None:
    set_onnx_metadata(staged, meta)
    with atomic_path(dst) as tmp:
        os.replace(staged, tmp)


def _preprocess(src: Path, work: Path, enabled: bool) -> tuple[Path, str]:
    """Run ORT's quant_pre_process (retrying without symbolic shape inference); return (model, note)."""
    if not enabled:
        return src, "skipped (preprocess=False)"
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    error = ""
    for note, kwargs in (
        ("quant_pre_process", {}),
        ("quant_pre_process without symbolic shape inference", {"skip_symbolic_shape": True}),
    ):
        try:
            with _quiet():
                quant_pre_process(str(src), str(out), **kwargs)
            return out, note
        except Exception as exc:  # noqa: BLE001 - fall through to the next, simpler attempt
            error = first_line(exc)
    return src, f"skipped (quant_pre_process failed: {error})"


def _entropy_cache(
    model: Path, feeds: list[dict[str, Any]], work: Path, quantize_static: Any
) -> tuple[dict, str]:
    """Entropy ranges from 2048-bin histograms, handed to quantize_static as a calibration cache.

    quantize_static's own entropy calibrator uses 128 histogram bins and 128 quantized bins, which
    leaves a single candidate threshold: the observed range, i.e. minmax. With 2048 bins the KL
    search can clip outliers. Needs an onnxruntime whose quantize_static takes
    `calibration_cache_path`; otherwise ORT's default is used and the note says so.
    """
    import inspect

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        return {}, "entropy (onnxruntime default 128 bins)"
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model,
        None,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(_reader(feeds))
    cache = work / "calibration.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return {"calibration_cache_path": str(cache)}, "entropy (2048-bin histograms)"


def _calibration_feeds(src: Path, batches: Iterable[Any], max_batches: int | None) -> list[dict[str, Any]]:
    """Convert calibration batches to ORT feeds keyed by the model's graph inputs."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from modelscale.export.ort_runner import to_numpy

    if isinstance(batches, str | bytes) or not isinstance(batches, Iterable):
        raise ModelscaleError("calibration_batches must be an iterable of input batches (e.g. a DataLoader)")
    proto = onnx.load(str(src), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [
        (v.name, tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
        for v in proto.graph.input
        if v.name not in initializers
    ]
    names = [n for n, _ in inputs]
    feeds: list[dict[str, Any]] = []
    for batch in batches:
        if max_batches is not None and len(feeds) >= max_batches:
            break
        if isinstance(batch, dict):
            missing = [n for n in names if n not in batch]
            if missing:
                raise ModelscaleError(
                    f"calibration batch dict lacks input(s) {missing}; keys must be {names}"
                )
            values = [batch[n] for n in names]
        elif isinstance(batch, tuple | list):
            # (x, y) pairs from our loaders: keep the first len(inputs) entries
            values = list(batch[: len(names)])
        else:
            values = [batch]
        if len(values) != len(names):
            raise ModelscaleError(
                f"{src.name} takes {len(names)} input(s) {names}; a calibration batch had {len(values)}"
            )
        feeds.append({n: to_numpy(v, n, dtype) for v, (n, dtype) in zip(values, inputs, strict=True)})
    if not feeds:
        raise ModelscaleError("calibration_batches is empty; pass a few batches of representative inputs")
    return feeds


def _reader(feeds: list[dict[str, Any]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _FeedReader(CalibrationDataReader):
        """Hands ORT's calibrator one prepared feed at a time; rewindable."""

        def __init__(self) -> None:
            self._iter = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._iter, None)

        def rewind(self) -> None:
            self._iter = iter(feeds)

    return _FeedReader()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the quantizer's progress prints and info logging (errors still propagate)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
