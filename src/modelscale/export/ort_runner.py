"""Run an ONNX file with ONNX Runtime: a callable wrapper, its latency, and agreement with PyTorch.

`OrtRunner(path)` opens an `onnxruntime.InferenceSession` (CPU by default, all graph optimizations,
`threads` intra-op threads) and is called like the model: torch tensors or numpy arrays in, torch
tensors out. `runner.latency(inputs)` times `session.run` alone (inputs converted once, outside the
timer). `interleaved_latency({"a": fn, "b": fn})` times several callables in rounds, rotating their
order, so drifting clocks and busy neighbours hit all alike. `check_agreement(model, runner, loader)`
runs both on the same batches and reports the largest absolute output difference and how often
their argmax (the predicted class, or token) agrees.

Example::

    from modelscale.export import OrtRunner, check_agreement
    runner = OrtRunner("out/model.onnx", threads=2)
    logits = runner(torch.rand(4, 1, 8, 8))                # torch.Tensor (4, 10)
    runner.latency(torch.rand(1, 1, 8, 8))["median_ms"]
    check_agreement(model, runner, test_loader)            # {"max_abs_diff": ..., "class_agreement": ...}
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.export.onnx_export import first_line, require

# ONNX Runtime's type strings for the tensor element types we convert to.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OrtRunner:
    """An ONNX Runtime session called like the PyTorch model it was exported from."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spin: bool = True,
    ) -> None:
        require("onnxruntime")
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelscaleError(
                f"ONNX file not found: {self.path}; check the path or export the model first"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ModelscaleError(
                f"threads must be an integer >= 1 or None (ONNX Runtime's default), got {threads!r}"
            )
        available = ort.get_available_providers()
        chosen = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in chosen if p not in available]
        if missing:
            raise ModelscaleError(
                f"ONNX Runtime provider(s) {', '.join(missing)} not available here; valid: {', '.join(available)}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
        if not spin:  # idle workers sleep instead of busy-waiting (fairer next to other CPU work)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind error types
            reason = first_line(exc).replace("[ONNXRuntimeError] : ", "")
            raise ModelscaleError(
                f"cannot load {self.path} with ONNX Runtime ({reason}); the file is corrupt or not an "
                "ONNX model: re-export it with export_onnx"
            ) from None
        self.threads = threads
        self.providers = self.session.get_providers()
        self._inputs = self.session.get_inputs()
        self.input_names = [i.name for i in self._inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __repr__(self) -> str:
        return f"OrtRunner({str(self.path)!r}, threads={self.threads}, providers={self.providers})"

    def feed(self, inputs: Any) -> dict[str, np.ndarray]:
        """The `{input name: numpy array}` dict for `inputs` (a tensor/array, a tuple of them, or a dict)."""
        if isinstance(inputs, dict):
            values = [inputs[name] for name in self.input_names if name in inputs]
            if len(values) != len(self.input_names):
                raise ModelscaleError(
                    f"inputs dict must have the keys {self.input_names}, got {sorted(inputs)}"
                )
        else:
            values = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
        if len(values) != len(self.input_names):
            raise ModelscaleError(
                f"{self.path.name} takes {len(self.input_names)} input(s) {self.input_names}, got {len(values)}"
            )
        return {
            meta.name: to_numpy(v, meta.name, _ORT_DTYPES.get(meta.type))
            for v, meta in zip(values, self._inputs, strict=True)
        }

    def run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """`session.run` on a prepared feed (no conversions: what `latency` times)."""
        return self.session.run(None, feed)

    def __call__(self, *inputs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the model; a single output comes back as a tensor, several as a tuple."""
        arg = inputs[0] if len(inputs) == 1 else inputs
        outputs = [torch.from_numpy(np.ascontiguousarray(o)) for o in self.run_feed(self.feed(arg))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def latency(self, inputs: Any, *, warmup: int = 10, repeats: int = 50) -> dict[str, Any]:
        """Median/p90/mean/min/max milliseconds of `session.run` over `repeats` runs after `warmup`."""
        feed = self.feed(inputs)
        stats = interleaved_latency({"onnx": lambda: self.run_feed(feed)}, warmup=warmup, repeats=repeats)[
            "onnx"
        ]
        first = next(iter(feed.values()))
        return {
            **stats,
            "batch_size": int(first.shape[0]) if first.ndim else 1,
            "threads": self.threads,
            "provider": self.providers[0],
        }


def interleaved_latency(
    fns: dict[str, Callable[[], Any]], *, warmup: int = 10, repeats: int = 50
) -> dict[str, dict[str, float]]:
    """Time each callable `repeats` times, in rounds with a rotating order; stats in milliseconds."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ModelscaleError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ModelscaleError(f"repeats must be an integer >= 1, got {repeats!r}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: latency_stats(ts, warmup=warmup) for name, ts in times.items()}


def latency_stats(times_ms: Sequence[float], *, warmup: int = 0) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "repeats": int(a.size),
        "warmup": int(warmup),
    }


def check_agreement(
    model: nn.Module,
    runner: OrtRunner,
    loader: Iterable[Any],
    *,
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Run `model` (in eval mode) and `runner` on the same batches and compare their outputs.

    Batches are `(x, y)` pairs (labels give accuracies too) or bare inputs. Returns `max_abs_diff`,
    `mean_abs_diff`, `class_agreement` (fraction of argmax over the last axis that match: the class
    for classifiers, the next token for language models), `examples`, `predictions`, and with labels
    `accuracy_torch` and `accuracy_onnx`.
    """
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    max_diff = 0.0
    abs_sum = 0.0
    n_values = n_preds = n_agree = n_examples = 0
    correct_torch = correct_onnx = n_labels = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = (
                (batch[0], batch[1]) if isinstance(batch, tuple | list) and len(batch) == 2 else (batch, None)
            )
            xs = x if isinstance(x, tuple | list) else (x,)
            with torch.inference_mode():
                ref = model(*(torch.as_tensor(t).to(device) for t in xs))
            ref = (ref[0] if isinstance(ref, tuple | list) else ref).detach().float().cpu()
            out = runner(*xs)
            out = (out[0] if isinstance(out, tuple) else out).float()
            if out.shape != ref.shape:
                raise ModelscaleError(
                    f"ONNX output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}; re-export the model"
                )
            diff = (out - ref).abs()
            max_diff = max(max_diff, float(diff.max()))
            abs_sum += float(diff.sum())
            n_values += diff.numel()
            p_ref, p_out = ref.argmax(-1), out.argmax(-1)
            n_agree += int((p_ref == p_out).sum())
            n_preds += p_ref.numel()
            n_examples += int(ref.shape[0]) if ref.dim() else 1
            if y is not None:
                y = torch.as_tensor(y)
                if y.shape == p_ref.shape:
                    correct_torch += int((p_ref == y).sum())
                    correct_onnx += int((p_out == y).sum())
                    n_labels += y.numel()
    finally:
        model.train(was_training)
    if n_preds == 0:
        raise ModelscaleError("check_agreement got no batches; pass a non-empty loader")
    result: dict[str, Any] = {
        "max_abs_diff": max_diff,
        "mean_abs_diff": abs_sum / max(n_values, 1),
        "class_agreement": n_agree / n_preds,
        "examples": n_examples,
        "predictions": n_preds,
    }
    if n_labels:
        result["accuracy_torch"] = correct_torch / n_labels
        result["accuracy_onnx"] = correct_onnx / n_labels
    return result


def to_numpy(value: Any, name: str, want: Any = None) -> np.ndarray:
    """`value` (tensor or array-like) as a contiguous numpy array of dtype `want` (same kind only)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        array = value.numpy()
    else:
        array = np.asarray(value)
    if want is not None and array.dtype != want:
        floating = np.issubdtype(want, np.floating)
        same_kind = (np.issubdtype(array.dtype, np.floating) and floating) or (
            np.issubdtype(array.dtype, np.integer) and np.issubdtype(want, np.integer)
        )
        if not same_kind:
            raise ModelscaleError(
                f"input {name!r} expects {np.dtype(want).name}, got {array.dtype}; pass "
                f"{'floats' if floating else 'integers'}"
            )
        array = array.astype(want)
    return np.ascontiguousarray(array)
