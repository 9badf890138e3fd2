"""The execution-backend options of `profile` and `compare`: `--compile`, `--compile-mode`, `--backend`.

`--compile` adds `torch.compile` next to eager PyTorch; `--backend ort` (or `both`) adds an ONNX Runtime
session with the same thread count. Every backend is timed paired and interleaved with eager
(`measure.backends`), setup time (compiling, exporting) is reported apart, and a backend that cannot
run the model is a labelled line with its reason — an error (exit 2) only for `--backend ort`, where
ORT is what was asked for.
"""

from __future__ import annotations

import argparse
from typing import Any

from modelscale.core.errors import ModelscaleError

BACKENDS = ("torch", "ort", "both")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    from modelscale.measure.compiled import MODES

    g = p.add_argument_group("execution backends (timed paired and interleaved with eager PyTorch)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="also time the model under torch.compile (compile time reported apart; eager if it fails)",
    )
    g.add_argument("--compile-mode", choices=MODES, default="default", help="torch.compile mode")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch; ort: also an ONNX Runtime session (exit 2 if ORT cannot run the model); "
        "both: ORT where it can run, else a note",
    )


def wanted(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "compile", False)) or getattr(args, "backend", "torch") != "torch"


def measure_backend_options(
    args: argparse.Namespace, models: dict[str, Any], example_inputs: Any, *, device: str = "cpu"
) -> Any:
    """The `BackendComparison` the options ask for (None when they ask for plain torch)."""
    from modelscale.measure.backends import measure_backends

    if not wanted(args):
        return None
    makers: dict[str, Any] = {}
    if args.compile:
        from modelscale.measure.compiled import compiled_candidate

        makers["compiled"] = compiled_candidate(args.compile_mode)
    if args.backend in ("ort", "both"):
        from modelscale.export.ort_latency import ort_candidate

        makers["ort"] = ort_candidate()
    try:
        return measure_backends(
            models,
            example_inputs,
            makers,
            device=device,
            repeats=args.repeats,
            threads=args.threads,
            time_budget_s=args.latency_budget,
            required=("ort",) if args.backend == "ort" else (),
        )
    except ModelscaleError as exc:
        if args.backend != "ort" or not str(exc).startswith("ort cannot run"):
            raise
        raise ModelscaleError(f"--backend {exc} (--backend both reports torch alone then)") from None


def check_backend_options(args: argparse.Namespace) -> None:
    if getattr(args, "no_latency", False) and wanted(args):
        raise ModelscaleError("--compile and --backend ort|both time the model: drop --no-latency")


def with_backends(args: argparse.Namespace, text: str, data: dict, models: dict[str, Any], x: Any):
    """`--compile` / `--backend`: the backends section under the command's own (text, data)."""
    backends = measure_backend_options(args, models, x, device=args.device)
    if backends is None:
        return text, data
    return f"{text}\n\n{backends.text()}", {**data, "backends": backends.to_dict()}
