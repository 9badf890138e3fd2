"""The `modelscale` command (also `python -m modelscale`).

Subcommands: profile, train, eval, compress, compare, demo, list. Technique and training options are
generated from their config dataclasses (`cli/options.py`). Bad input prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from modelscale.core.errors import ModelscaleError


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _timing(p: argparse.ArgumentParser, *, repeats: bool = True) -> None:
    """Latency options shared by the commands that time models."""
    if repeats:
        p.add_argument(
            "--repeats", type=int, default=30, help="timed repeats for latency (the minimum, paired)"
        )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU intra-op threads while timing (default 1: reproducible on a shared machine; give the "
        "core count to measure throughput)",
    )
    p.add_argument(
        "--latency-budget",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="extra seconds of paired repeats until the speedup's 95%% interval is within ±5%% (default 2)",
    )


def _common(p: argparse.ArgumentParser, *, model_positional: bool = True) -> None:
    if model_positional:
        p.add_argument(
            "model", help="zoo name (mlp, cnn, gpt, torchvision:NAME, hf:DIR) or a saved model folder"
        )
    p.add_argument(
        "--data", help="data source (digits, cifar10:DIR, imagefolder:DIR, npz:FILE, text:PATH, pystdlib)"
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="npz: data only: scale every feature to mean 0, sd 1 with train-split statistics "
        "(pass it to every command that uses the data)",
    )
    p.add_argument("--input-shape", help="batch input shape for profiling, e.g. 1,3,224,224")
    p.add_argument(
        "--num-classes",
        type=int,
        help="number of classes (default: from the data, else 10; torchvision 1000)",
    )
    p.add_argument("--width", type=float, default=1.0, help="width multiplier of zoo models")
    p.add_argument("--depth", type=float, default=1.0, help="depth multiplier of zoo models")
    p.add_argument("--weights", help="weights file (.safetensors or a torch state dict)")
    _allow_pickle(p)
    p.add_argument("--seed", type=int, default=0, help="seed for data splits and training")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _allow_pickle(
    p: argparse.ArgumentParser, what: str = "the weights and model folder this command names"
) -> None:
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help=f"allow pickled weights (they can run code) for {what}; only for files you trust — "
        "no file can turn this on",
    )


def _nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train on N local processes (starts torchrun; data-parallel, see --parallel); "
        "for several machines run torchrun yourself (README)",
    )


def _parallel_finetune(p: argparse.ArgumentParser) -> None:
    """The fine-tune's parallel options (train takes them from TrainConfig itself)."""
    g = p.add_argument_group("parallel fine-tuning (with --nproc N or under torchrun)")
    g.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp", help="ddp replicas or fsdp shards")
    g.add_argument("--fsdp-dtype", choices=("fp32", "bf16"), default="fp32", help="fsdp gather/reduce dtype")
    g.add_argument("--cpu-offload", action="store_true", help="fsdp: shards and optimizer step on the CPU")
    g.add_argument(
        "--activation-checkpointing", action="store_true", help="recompute block activations in backward"
    )


def _techniques_epilog() -> str:
    from modelscale.core.registry import get_technique, list_techniques

    lines = ["registered techniques (`--technique NAME --help` lists a technique's options):"]
    for name in list_techniques():
        lines.append(f"  {name:20s} {get_technique(name).summary}")
    return "\n".join(lines)


def build_parser(technique: str | None = None, *, list_techniques: bool = True) -> argparse.ArgumentParser:
    """The CLI parser; `list_techniques=False` skips importing every technique for compress's epilog."""
    from modelscale import __version__
    from modelscale.cli.measuring import add_backend_options

    parser = _Parser(prog="modelscale", description="Measure, compress and scale PyTorch models, honestly.")
    parser.add_argument("--version", action="version", version=f"modelscale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "profile", help="params, bytes, MACs/FLOPs, latency, memory (and accuracy with --data)"
    )
    _common(p)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    _timing(p)
    add_backend_options(p)
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch for latency when --input-shape is not given"
    )

    p = sub.add_parser("train", help="train a zoo model on a data source and save it")
    _common(p, model_positional=True)
    p.add_argument("--out", required=True, help="folder to save the trained model in")
    p.add_argument("--config", help="a YAML/JSON train config (options given here override it)")
    _nproc(p)
    from modelscale.cli.options import add_config_options
    from modelscale.train import TrainConfig

    add_config_options(p, TrainConfig, title="training options")

    p = sub.add_parser("eval", help="evaluate a model on a data source's test split")
    _common(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")

    p = sub.add_parser(
        "compress",
        help="apply one technique, optionally fine-tune or distill, report before/after",
        description="Apply one registered technique (then optionally fine-tune, or distill from a teacher) "
        "and compare the result with the input model.",
        epilog=_techniques_epilog() if list_techniques else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument(
        "--technique", required=True, help="registered technique (see `modelscale list techniques`)"
    )
    p.add_argument("--config", help="a YAML/JSON technique config (options given here override it)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="epochs of fine-tuning after the technique")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="learning rate of the fine-tune")
    p.add_argument(
        "--distill-from",
        metavar="TEACHER_DIR",
        help="fine-tune by knowledge distillation from this saved model folder (needs --finetune-epochs)",
    )
    p.add_argument(
        "--distill-alpha", type=float, default=0.5, help="weight of the hard-label loss in distillation"
    )
    p.add_argument("--distill-temperature", type=float, default=4.0, help="distillation temperature T")
    p.add_argument(
        "--calibration-batches", type=int, default=4, help="training batches given to data-driven techniques"
    )
    p.add_argument("--out", help="folder to save the compressed model and report in")
    _nproc(p)
    _parallel_finetune(p)
    _timing(p)
    p.add_argument(
        "--storage",
        choices=("dense", "sparse"),
        default="dense",
        help="how --out stores the weights: dense (masks baked: never larger than the baseline) or "
        "sparse (bitmask/CSR where smaller); sizes reported are that file's bytes",
    )
    if technique:
        from modelscale.core.registry import get_technique

        add_config_options(p, get_technique(technique).config_cls, title=f"{technique} options")

    p = sub.add_parser(
        "compare", help="compare two models: deltas, compression, MACs ratio next to measured speedup"
    )
    p.add_argument("base", help="baseline: saved model folder or zoo name")
    p.add_argument("other", help="other model: saved model folder or zoo name")
    _common(p, model_positional=False)
    _timing(p)
    add_backend_options(p)

    p = sub.add_parser(
        "sensitivity", help="metric drop when compressing each layer alone, at several strengths"
    )
    _common(p)
    p.add_argument("--technique", default="magnitude_prune", help="registered technique to probe")
    p.add_argument(
        "--field", default=None, help="config field setting the strength (default: the technique's)"
    )
    p.add_argument("--strengths", default="0.3,0.5,0.7,0.9", help="comma-separated strengths to try")
    p.add_argument("--config", help="a YAML/JSON base config for the technique")

    p = sub.add_parser(
        "export", help="export to ONNX, optionally int8 with ONNX Runtime; check agreement, time it"
    )
    _common(p)
    p.add_argument("--out", required=True, help="folder for model.onnx (and model.int8.onnx) and the summary")
    p.add_argument(
        "--quantize", choices=["none", "dynamic", "static"], default="none", help="ONNX Runtime int8"
    )
    p.add_argument(
        "--method", choices=["minmax", "entropy", "percentile"], default="minmax", help="static calibration"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats for latency")

    p = sub.add_parser(
        "scale", help="scaling study: train a model family at several sizes / data budgets, fit laws"
    )
    p.add_argument("study", help="sweep YAML/JSON (one sweep, or {sweeps: [...]})")
    p.add_argument(
        "--store", default=None, help="run store: SQLite file or SQLAlchemy URL (default runs/modelscale.db)"
    )
    p.add_argument("--out", default=None, help="output folder for summary.md, study.json and figures")
    p.add_argument("--jobs", type=int, default=1, help="points trained in parallel processes")
    p.add_argument(
        "--gpu-sizes", action="store_true", help="also train the sweep's gpu_widths (for GPU machines)"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="share the sweep's points through an Optuna study (sqlite:///… or postgresql://…)",
    )
    p.add_argument("--worker", action="store_true", help="join the shared sweep another process started")
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between a worker's heartbeats")
    p.add_argument(
        "--join-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --worker: wait up to this long for the study to be started (workers launched together)",
    )
    _allow_pickle(p, "the weights the study's model_options name")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser(
        "search",
        help="search whole compression recipes (Optuna) for objectives under constraints; Pareto set",
        description="Search pruning × low rank × (distilled) fine-tune × quantization recipes for a trained "
        "model. Metrics: accuracy, loss, accuracy_drop (points), bytes, zipped_bytes, latency_p50_b1, "
        "latency_p90_b1, latency_p50_bN, latency_p90_bN, speedup_b1, speedup_bN, params, macs.",
    )
    p.add_argument("model", help="the trained model: a saved model folder (or a zoo name)")
    p.add_argument("--data", required=True, help="data source the model was trained on (e.g. digits)")
    p.add_argument("--space", help="a YAML/JSON search space (default: prune × low rank × tune × quantize)")
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        help="objective metric (repeatable; default accuracy, bytes)",
    )
    p.add_argument(
        "--constraint",
        action="append",
        default=[],
        help="e.g. 'accuracy_drop <= 1' or 'latency_p90_b1 <= 0.5 * baseline'",
    )
    p.add_argument("--trials", type=int, default=50, help="trials in the study (all workers together)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--out", default="runs/search", help="folder for trials, recipes/ and pareto.json")
    p.add_argument(
        "--storage", default=None, help="Optuna storage URL (default: sqlite in --out; postgresql://…)"
    )
    p.add_argument("--study", default="search", help="study name in the storage")
    p.add_argument("--resume", action="store_true", help="continue an existing study")
    p.add_argument(
        "--worker", action="store_true", help="join an existing study (another process started it)"
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (recorded in the study)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing latency")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="seconds between a worker's heartbeats (stale after twice that)",
    )
    p.add_argument(
        "--no-early-stop",
        action="store_true",
        help="run every trial to the end (no paired-test stop of trials worse than their incumbent)",
    )
    _allow_pickle(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser(
        "fit-law", help="fit a scaling law L = E + A/N^a (+ B/D^b) to a CSV, with bootstrap CIs"
    )
    p.add_argument("csv", help="CSV file with one row per trained model")
    p.add_argument("--n", required=True, help="column with the parameter count N")
    p.add_argument("--loss", required=True, help="column with the loss")
    p.add_argument("--d", default=None, help="column with the data size D (tokens or examples)")
    p.add_argument(
        "--c", default=None, help="column with training compute C in FLOPs (instead of D: D = C / 6N)"
    )
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser(
        "run", help="run a recipe (YAML/JSON): steps in order, resumable, recorded in the run store"
    )
    p.add_argument("recipe", help="recipe file (see recipes/)")
    p.add_argument(
        "--store", default=None, help="run store: SQLite file or SQLAlchemy URL (default runs/modelscale.db)"
    )
    p.add_argument("--run-dir", default=None, help="folder for checkpoints (default runs/<recipe name>)")
    p.add_argument("--no-resume", action="store_true", help="start again instead of resuming finished steps")
    p.add_argument(
        "--epochs", type=int, default=None, help="override every training step's epochs (quick runs)"
    )
    _allow_pickle(p, "the weights and model folders the recipe names")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("runs", help="list, show, compare or delete recorded runs")
    p.add_argument("action", choices=["list", "show", "compare", "delete"])
    p.add_argument("ids", nargs="*", help="run id(s) or unique prefixes (show/compare/delete)")
    p.add_argument(
        "--store", default=None, help="run store: SQLite file or SQLAlchemy URL (default runs/modelscale.db)"
    )
    p.add_argument("--recipe", default=None, help="only runs of this recipe (list)")
    p.add_argument("--yes", action="store_true", help="delete several runs given at once")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser(
        "report", help="Markdown + one self-contained HTML report (plots, Pareto front) for runs"
    )
    p.add_argument("ids", nargs="+", help="run id(s) or unique prefixes (see `modelscale runs list`)")
    p.add_argument(
        "--store", default=None, help="run store: SQLite file or SQLAlchemy URL (default runs/modelscale.db)"
    )
    p.add_argument("--out", default=None, help="output folder (default reports/<run ids>)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("demo", help="the main job: train the CNN on digits, prune, fine-tune, report")
    p.add_argument("--out", default=None, help="run folder (default: runs/demo-<time>)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("list", help="list techniques, models or data sources")
    p.add_argument("what", choices=["techniques", "models", "data"])
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    return parser


def _technique_from_argv(argv: Sequence[str]) -> str | None:
    argv = list(argv)
    if not argv or argv[0] != "compress":
        return None
    for i, arg in enumerate(argv):
        if arg == "--technique" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--technique="):
            return arg.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from modelscale.core.errors import ModelscaleWarning

    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", ModelscaleWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            if issubclass(category, ModelscaleWarning):
                sys.stderr.write(f"modelscale: warning: {message}\n")
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _main(argv)


def _main(argv: list[str]) -> int:
    from modelscale.cli.guard import PartialFailure, undo_on_failure

    try:
        parser = build_parser(_technique_from_argv(argv), list_techniques=argv[:1] == ["compress"])
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # a usage error: its one line is printed already
            if exc.code == 2:
                return 2
            raise
        args.argv = argv  # for --nproc, which relaunches the same command under torchrun
        from modelscale.cli import commands

        with undo_on_failure(args):
            result = getattr(commands, "cmd_" + args.command.replace("-", "_"))(args)
    except PartialFailure as exc:
        _print(args, exc.result)
        sys.stderr.write(f"modelscale: error: {exc}\n")
        return 1
    except ModelscaleError as exc:
        sys.stderr.write(f"modelscale: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("modelscale: interrupted\n")
        return 130
    _print(args, result)
    return 0


def _print(args: argparse.Namespace, result: Any) -> None:
    if result is None:
        return
    text, data = result
    if getattr(args, "json", False):
        print(json.dumps(_strict(data), indent=2, default=_default, allow_nan=False))
    else:
        print(text)


def _strict(value: Any) -> Any:
    """JSON has no NaN or Infinity: non-finite floats become null."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return _strict(value.to_dict())
    return value


def _default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
