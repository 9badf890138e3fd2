"""Implementations of the CLI subcommands. Each returns (text, data) or raises ModelscaleError."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.workflow import (
    ModelBundle,
    build_for,
    example_inputs,
    is_model_dir,
    is_token_model,
    load_model_dir,
    loss_for,
    parse_shape,
)


def _load_data(args: argparse.Namespace, *, required: bool = False):
    if not getattr(args, "data", None):
        if required:
            raise ModelscaleError(
                "this command needs --data (e.g. --data digits); see `modelscale list data`"
            )
        return None
    from modelscale.data import load_data

    return load_data(args.data, seed=args.seed)


def _load_model(source: str, args: argparse.Namespace, data: Any) -> ModelBundle:
    if is_model_dir(source):
        return load_model_dir(source, allow_pickle=getattr(args, "allow_pickle", False))
    if Path(source).exists() and Path(source).is_dir():
        raise ModelscaleError(f"{source} is a folder but not a saved modelscale model (no modelscale.json)")
    shape = parse_shape(getattr(args, "input_shape", None))
    return build_for(
        source,
        data=data,
        input_shape=shape[1:] if shape and not is_token_model(source) else None,
        num_classes=getattr(args, "num_classes", None),
        weights=getattr(args, "weights", None),
        allow_pickle=getattr(args, "allow_pickle", False),
        width=getattr(args, "width", 1.0),
        depth=getattr(args, "depth", 1.0),
    )


def _inputs(bundle: ModelBundle, args: argparse.Namespace, data: Any, batch: int = 1):
    shape = parse_shape(getattr(args, "input_shape", None))
    name = bundle.spec.get("name", "")
    if shape is None:
        if data is not None:
            per_example = tuple(data.input_shape)
        elif "input_shape" in bundle.spec:
            per_example = tuple(bundle.spec["input_shape"])
        elif name == "gpt":
            per_example = (int(bundle.spec.get("block_size", 128)),)
        else:
            per_example = (3, 224, 224) if name.startswith("torchvision:") else (1, 8, 8)
        shape = (batch, *per_example)
    vocab = int(bundle.spec.get("vocab_size", 256))
    return example_inputs(name, shape, vocab=vocab)


def _test_loader(data: Any, split: str = "test"):
    if data is None:
        return None
    from modelscale.data import make_loader

    return make_loader(getattr(data, split), batch_size=256, shuffle=False)


def cmd_profile(args: argparse.Namespace):
    from modelscale.measure.profile import profile
    from modelscale.report.tables import profile_markdown

    data = _load_data(args)
    bundle = _load_model(args.model, args, data)
    x = _inputs(bundle, args, data, batch=args.batch_size or 1)
    report = profile(
        bundle.model,
        x,
        latency=not args.no_latency,
        repeats=args.repeats,
        device=args.device,
        loader=_test_loader(data),
        task=data.task if data else "classification",
    )
    return profile_markdown(report), report.to_dict()


def _train_config(args: argparse.Namespace):
    from modelscale.cli.options import config_from_args
    from modelscale.core.io import read_structured
    from modelscale.train import TrainConfig

    base = read_structured(args.config) if args.config else {}
    base.setdefault("seed", args.seed)
    if args.device != "cpu":
        base.setdefault("device", args.device)
    return config_from_args(TrainConfig, args, base)


def cmd_train(args: argparse.Namespace):
    from modelscale.train import evaluate, fit
    from modelscale.workflow import save_model_dir

    data = _load_data(args, required=True)
    config = _train_config(args)
    bundle = _load_model(args.model, args, data)
    result = fit(bundle.model, data, config)
    metrics = evaluate(bundle.model, data.test, task=data.task)
    out = save_model_dir(
        args.out, bundle, meta={"data": args.data, "train": config.to_dict(), "test": metrics}
    )
    lines = [f"trained {bundle.spec.get('name')} on {args.data}: " + _fmt_metrics(metrics), f"saved to {out}"]
    return "\n".join(lines), {"test": metrics, "out": str(out), "history": getattr(result, "history", None)}


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))


def cmd_eval(args: argparse.Namespace):
    from modelscale.train import evaluate

    data = _load_data(args, required=True)
    bundle = _load_model(args.model, args, data)
    metrics = evaluate(bundle.model, getattr(data, args.split), task=data.task)
    return f"{args.split}: {_fmt_metrics(metrics)}", {"split": args.split, **metrics}


def cmd_compress(args: argparse.Namespace):
    from modelscale.cli.options import config_from_args
    from modelscale.core.apply import apply
    from modelscale.core.io import read_structured, write_json, write_text
    from modelscale.core.registry import get_technique
    from modelscale.measure.compare import compare
    from modelscale.report.tables import compare_markdown
    from modelscale.workflow import save_model_dir

    technique = get_technique(args.technique)
    base_cfg = read_structured(args.config) if args.config else {}
    base_cfg.pop("type", None)
    config = config_from_args(technique.config_cls, args, base_cfg)
    data = _load_data(args)
    bundle = _load_model(args.model, args, data)
    x = _inputs(bundle, args, data)
    calibration = None
    if data is not None:
        from modelscale.data import make_loader

        loader = make_loader(data.train, batch_size=64, shuffle=True, seed=args.seed)
        calibration = [batch for _, batch in zip(range(args.calibration_batches), loader)]
    result = apply(bundle.model, config, calibration=calibration, example_inputs=x, loss_fn=loss_for(data))
    if args.finetune_epochs:
        if data is None:
            raise ModelscaleError("--finetune-epochs needs --data to train on")
        from modelscale.train import TrainConfig, fit

        fit(result.model, data, TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=args.seed))
    if args.technique == "qat":  # after quantization-aware training, switch to the real int8 layers
        from modelscale.techniques.quantize.qat import convert_qat

        result = convert_qat(result.model, inplace=True)
    cmp = compare(bundle.model, result.model, x, loader=_test_loader(data))
    text = compare_markdown(cmp)
    if result.record.notes:
        text += "\n\nNotes:\n" + "\n".join(f"- {n}" for n in result.record.notes)
    data_out = {"record": result.record.to_dict(), "comparison": cmp.to_dict()}
    if args.out:
        new = ModelBundle(result.model, bundle.spec, [*bundle.records, result.record])
        save_model_dir(Path(args.out) / "model", new, meta={"data": args.data})
        write_json(Path(args.out) / "results.json", data_out)
        write_text(
            Path(args.out) / "report.md", f"# {args.technique} on {bundle.spec.get('name')}\n\n{text}\n"
        )
        text += f"\n\nsaved to {args.out}"
    return text, data_out


def cmd_compare(args: argparse.Namespace):
    from modelscale.measure.compare import compare
    from modelscale.report.tables import compare_markdown

    data = _load_data(args)
    base = _load_model(args.base, args, data)
    other = _load_model(args.other, args, data)
    x = _inputs(base, args, data)
    cmp = compare(base.model, other.model, x, loader=_test_loader(data), repeats=args.repeats)
    return compare_markdown(cmp), cmp.to_dict()


def cmd_sensitivity(args: argparse.Namespace):
    from modelscale.analysis.sensitivity import sensitivity, sensitivity_markdown
    from modelscale.core.io import read_structured

    data = _load_data(args, required=True)
    bundle = _load_model(args.model, args, data)
    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    except ValueError:
        raise ModelscaleError(
            f"--strengths {args.strengths!r} must be comma-separated numbers, e.g. 0.3,0.5,0.9"
        ) from None
    table = sensitivity(
        bundle.model,
        args.technique,
        args.field,
        strengths,
        _test_loader(data, "val"),
        base_config=read_structured(args.config) if args.config else None,
        example_inputs=_inputs(bundle, args, data),
        loss_fn=loss_for(data),
    )
    return sensitivity_markdown(table), table.to_dict()


def cmd_export(args: argparse.Namespace):
    from modelscale.export import export_command

    data = _load_data(args)
    source: Any = args.model if is_model_dir(args.model) else _load_model(args.model, args, data).model
    summary = export_command(
        source,
        args.out,
        data=data,
        quantize=args.quantize,
        method=args.method,
        threads=args.threads,
        repeats=args.repeats,
        seed=args.seed,
        allow_pickle=args.allow_pickle,
    )
    lines = [f"exported to {args.out}:"]
    for name, info in summary["files"].items():
        lines.append(f"  {name}: {info.get('path', '')} ({info.get('bytes', 0) / 1e6:.2f} MB)")
    for name, agree in summary.get("agreement", {}).items():
        lines.append(
            f"  {name} vs PyTorch on {summary['data']['spec']} test: class agreement "
            f"{agree['class_agreement'] * 100:.2f}%, max |diff| {agree['max_abs_diff']:.2e}"
        )
    for key, stats in summary["latency"].items():
        ratios = ", ".join(f"{n} {r:.2f}x" for n, r in stats["speedup_vs_pytorch"].items())
        lines.append(f"  {key}: measured speedup vs PyTorch fp32: {ratios}")
    return "\n".join(lines), summary


def cmd_scale(args: argparse.Namespace):
    from modelscale.scaling.study import scale_command

    if args.jobs < 1:
        raise ModelscaleError(f"--jobs must be >= 1, got {args.jobs}")
    return scale_command(
        args.study,
        store=args.store,
        out=args.out,
        jobs=args.jobs,
        gpu_sizes=args.gpu_sizes,
        allow_pickle=args.allow_pickle,
    )


def cmd_fit_law(args: argparse.Namespace):
    from modelscale.scaling import fit_law_command

    if args.d and args.c:
        raise ModelscaleError("give --d or --c, not both")
    return fit_law_command(
        args.csv, n=args.n, loss=args.loss, d=args.d, c=args.c, n_boot=args.n_boot, seed=args.seed
    )


def cmd_run(args: argparse.Namespace):
    from modelscale.pipeline import run_command

    return run_command(
        args.recipe,
        store=args.store,
        run_dir=args.run_dir,
        resume=not args.no_resume,
        epochs=args.epochs,
        allow_pickle=args.allow_pickle,
    )


def cmd_runs(args: argparse.Namespace):
    from modelscale import pipeline

    if args.action == "list":
        return pipeline.runs_list(store=args.store, recipe=args.recipe)
    if args.action == "compare":
        return pipeline.runs_compare(args.ids, store=args.store)
    if len(args.ids) != 1:
        raise ModelscaleError(f"`runs {args.action}` takes exactly one run id; see `modelscale runs list`")
    return getattr(pipeline, f"runs_{args.action}")(args.ids[0], store=args.store)


def cmd_report(args: argparse.Namespace):
    from modelscale.report import report_command

    return report_command(args.ids, store=args.store, out=args.out)


def cmd_demo(args: argparse.Namespace):
    from modelscale.demo import run_demo

    summary = run_demo(out=args.out, quick=args.quick)
    return summary["text"], summary


def cmd_list(args: argparse.Namespace):
    if args.what == "techniques":
        from modelscale.core.registry import get_technique, list_techniques

        names = list_techniques()
        rows = [f"{n:24s} {get_technique(n).summary}" for n in names]
        return "\n".join(rows), names
    if args.what == "models":
        from modelscale.models import list_models

        names = list_models()
        return "\n".join(names), names
    from modelscale.data import list_sources

    names = list_sources()
    return "\n".join(names), names
