"""Implementations of the CLI subcommands. Each returns (text, data) or raises ModelscaleError.

Every command that touches a model opens one engine session (`modelscale.engine.open_session`): the data
and the model are loaded there, once, the same way for every command; `compress` is a one- to
three-step run (technique, optional distillation or fine-tune) of the same engine the recipes use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError

MAX_BOOT = 100_000  # bootstrap resamples: more only costs time


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,3,224,224' -> (1, 3, 224, 224), with a one-line error for anything else."""
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ModelscaleError(
            f"--input-shape {text!r} must be comma-separated integers, e.g. 1,3,224,224"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelscaleError(f"--input-shape {text!r} must be positive integers, e.g. 1,3,224,224")
    return shape


def _session(args: argparse.Namespace, source: Any = None, *, data: Any = None, need_data: bool = False):
    """The command's session: `--data` loaded once (or the given DataBundle), then the model for it."""
    from modelscale.engine import open_session

    if need_data and not getattr(args, "data", None) and data is None:
        raise ModelscaleError("this command needs --data (e.g. --data digits); see `modelscale list data`")
    return open_session(
        getattr(args, "model", None) if source is None else source,
        data=data if data is not None else getattr(args, "data", None),
        seed=getattr(args, "seed", 0),
        input_shape=parse_shape(getattr(args, "input_shape", None)),
        num_classes=getattr(args, "num_classes", None),
        weights=getattr(args, "weights", None),
        allow_pickle=getattr(args, "allow_pickle", False),
        calibration_batches=getattr(args, "calibration_batches", 4),
        width=getattr(args, "width", 1.0),
        depth=getattr(args, "depth", 1.0),
        data_options={"standardize": True} if getattr(args, "standardize", False) else None,
    )


def _data_meta(args: argparse.Namespace, session: Any) -> dict[str, Any]:
    """What a saved folder records of its data: the spec, and the standardization when one was used."""
    meta: dict[str, Any] = {"data": args.data}
    standardized = session.data.meta.get("standardize") if session.data is not None else None
    if standardized:
        meta["data_options"] = {"standardize": True}
        meta["standardize"] = standardized
    return meta


def cmd_profile(args: argparse.Namespace):
    from modelscale.cli.measuring import check_backend_options, with_backends
    from modelscale.measure.profile import profile
    from modelscale.report.tables import profile_markdown

    check_backend_options(args)
    session = _session(args)
    x = session.example_inputs(args.batch_size)
    report = profile(
        session.model,
        x,
        latency=not args.no_latency,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        loader=session.test_loader(),
        task=session.task,
    )
    return with_backends(args, profile_markdown(report), report.to_dict(), {"model": session.model}, x)


def _train_config(args: argparse.Namespace):
    from modelscale.cli.options import config_from_args
    from modelscale.core.io import read_structured
    from modelscale.train import TrainConfig

    base = read_structured(args.config) if args.config else {}
    base.setdefault("seed", args.seed)
    if args.device != "cpu":
        base.setdefault("device", args.device)
    return config_from_args(TrainConfig, args, base)


def _relaunched(args: argparse.Namespace) -> bool:
    """`--nproc N` (N > 1) outside torchrun: run this same command on N local ranks, then stop here."""
    from modelscale.train.launch import is_rank_process, launch

    if args.nproc < 1:
        raise ModelscaleError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc == 1 or is_rank_process():
        return False
    code = launch(getattr(args, "argv", sys.argv[1:]), args.nproc)
    if code:
        raise SystemExit(code)
    return True


def cmd_train(args: argparse.Namespace):
    from modelscale.engine import BaselineStep, Step, run_step
    from modelscale.models.loading import save_model_dir
    from modelscale.train import evaluate
    from modelscale.train.launch import finish_rank, is_main_rank

    config = _train_config(args)
    if _relaunched(args):
        return None
    session = _session(args, need_data=True)
    outcome = run_step(session, Step(0, "train", "baseline", BaselineStep(train=config)))
    if not is_main_rank():  # under torchrun rank 0 evaluates, saves and reports
        finish_rank()
        return None
    metrics = evaluate(session.model, session.data.test, task=session.task)
    out = save_model_dir(
        args.out,
        session.bundle,
        meta={**_data_meta(args, session), "train": config.to_dict(), "test": metrics},
    )
    finish_rank()
    name = session.bundle.spec.get("name")
    lines = [f"trained {name} on {args.data}: " + _fmt_metrics(metrics), f"saved to {out}"]
    if outcome.summary["train"].get("compile"):
        from modelscale.measure.compiled import CompileReport

        lines.insert(1, CompileReport.from_dict(outcome.summary["train"]["compile"]).describe())
    return "\n".join(lines), {"test": metrics, "out": str(out), "train": outcome.summary["train"]}


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))


def cmd_eval(args: argparse.Namespace):
    from modelscale.train import evaluate

    session = _session(args, need_data=True)
    metrics = evaluate(session.model, getattr(session.data, args.split), task=session.task)
    return f"{args.split}: {_fmt_metrics(metrics)}", {"split": args.split, **metrics}


def compress_steps(args: argparse.Namespace, config: Any) -> list[Any]:
    """`compress` as engine steps: the technique, then a distillation or a fine-tune when asked."""
    from modelscale.engine import Step
    from modelscale.train import TrainConfig

    steps = [Step(1, config.type, "technique", config)]
    if args.distill_from and not args.finetune_epochs:
        raise ModelscaleError("--distill-from needs --finetune-epochs N (the epochs of distillation)")
    if args.finetune_epochs:
        train = TrainConfig(
            epochs=args.finetune_epochs,
            lr=args.finetune_lr,
            seed=args.seed,
            parallel=getattr(args, "parallel", "ddp"),
            fsdp_dtype=getattr(args, "fsdp_dtype", "fp32"),
            cpu_offload=getattr(args, "cpu_offload", False),
            activation_checkpointing=getattr(args, "activation_checkpointing", False),
        )
        if args.distill_from:
            from modelscale.engine import DistillStep
            from modelscale.techniques.distill import DistillConfig

            kd = DistillConfig(alpha=args.distill_alpha, temperature=args.distill_temperature)
            steps.append(Step(2, "distill", "distill", DistillStep(args.distill_from, kd, train)))
        else:
            steps.append(Step(2, "finetune", "finetune", train))
    return steps


def cmd_compress(args: argparse.Namespace):
    import copy

    from modelscale.cli.options import config_from_args
    from modelscale.core.io import read_structured, write_json, write_text
    from modelscale.core.registry import get_technique
    from modelscale.engine import run_steps
    from modelscale.measure.compare import compare, use_file_sizes
    from modelscale.models.loading import save_model_dir
    from modelscale.report.tables import compare_markdown

    technique = get_technique(args.technique)
    base_cfg = read_structured(args.config) if args.config else {}
    base_cfg.pop("type", None)
    config = config_from_args(technique.config_cls, args, base_cfg)
    if args.finetune_epochs < 0:
        raise ModelscaleError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.finetune_epochs and not args.data:
        raise ModelscaleError("--finetune-epochs needs --data to train on")
    steps = compress_steps(args, config)
    if _relaunched(args):
        return None
    session = _session(args)
    base = copy.deepcopy(session.model)
    x = session.example_inputs()
    outcomes = run_steps(session, steps)
    from modelscale.train.launch import finish_rank, is_main_rank

    finish_rank()  # under torchrun: every rank fine-tuned; rank 0 compares, saves and reports
    if not is_main_rank():
        return None
    record = session.bundle.records[-1]
    cmp = compare(
        base,
        session.model,
        x,
        loader=session.test_loader(),
        storage=args.storage,
        repeats=args.repeats,
        threads=args.threads,
        latency_budget_s=args.latency_budget,
    )
    file_info = None
    if args.out:
        folder = save_model_dir(
            Path(args.out) / "model", session.bundle, meta=_data_meta(args, session), storage=args.storage
        )
        file_info = use_file_sizes(cmp, folder)
    text = compare_markdown(cmp)
    if record.notes:
        text += "\n\nNotes:\n" + "\n".join(f"- {n}" for n in record.notes)
    data_out = {
        "record": record.to_dict(),
        "steps": [o.summary for o in outcomes],
        "comparison": cmp.to_dict(),
    }
    if file_info is not None:
        data_out["file"] = file_info
    if args.out:
        write_json(Path(args.out) / "results.json", data_out)
        name = session.bundle.spec.get("name")
        write_text(Path(args.out) / "report.md", f"# {args.technique} on {name}\n\n{text}\n")
        text += f"\n\nsaved to {args.out}"
    return text, data_out


def cmd_compare(args: argparse.Namespace):
    from modelscale.cli.measuring import with_backends
    from modelscale.measure.compare import compare
    from modelscale.models.loading import load_model
    from modelscale.report.tables import compare_markdown

    session = _session(args, args.base)
    other = load_model(
        args.other,
        data=session.data,
        input_shape=session.input_shape[1:] if session.input_shape else None,
        num_classes=args.num_classes,
        allow_pickle=args.allow_pickle,
        width=args.width,
        depth=args.depth,
    )
    from modelscale.engine.compat import check_fits, expected_shape

    x = session.example_inputs()
    base_shape, other_shape = expected_shape(session.bundle), expected_shape(other)
    if session.data is None and base_shape and other_shape and base_shape != other_shape:
        raise ModelscaleError(
            f"{args.base} takes inputs of shape {base_shape} but {args.other} takes {other_shape}; "
            "compare models built for the same inputs"
        )
    check_fits(other, session.data, label=args.other, example=None if session.data is not None else x[:1])
    cmp = compare(
        session.model,
        other.model,
        x,
        loader=session.test_loader(),
        repeats=args.repeats,
        threads=args.threads,
        latency_budget_s=args.latency_budget,
    )
    models = {"base": session.model, "other": other.model}
    return with_backends(args, compare_markdown(cmp), cmp.to_dict(), models, x)


def cmd_sensitivity(args: argparse.Namespace):
    from modelscale.analysis.sensitivity import sensitivity, sensitivity_markdown
    from modelscale.core.io import read_structured

    session = _session(args, need_data=True)
    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    except ValueError:
        raise ModelscaleError(
            f"--strengths {args.strengths!r} must be comma-separated numbers, e.g. 0.3,0.5,0.9"
        ) from None
    if not strengths:
        raise ModelscaleError("--strengths is empty; give comma-separated numbers, e.g. 0.3,0.5,0.9")
    table = sensitivity(
        session.model,
        args.technique,
        args.field,
        strengths,
        session.test_loader("val"),
        base_config=read_structured(args.config) if args.config else None,
        example_inputs=session.example_inputs(),
        loss_fn=session.loss_fn(),
    )
    return sensitivity_markdown(table), table.to_dict()


def cmd_export(args: argparse.Namespace):
    from modelscale.engine.compat import check_exportable
    from modelscale.export import export_command

    if args.repeats < 1:
        raise ModelscaleError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise ModelscaleError(f"--threads must be >= 1, got {args.threads}")
    if args.quantize == "static" and not args.data:
        raise ModelscaleError("--quantize static calibrates on data: give --data (e.g. the training data)")
    session = _session(args)
    check_exportable(session.bundle.records, f"export of {args.model}")
    summary = export_command(
        session.bundle,
        args.out,
        data=session.data,
        quantize=args.quantize,
        method=args.method,
        threads=args.threads,
        repeats=args.repeats,
        seed=args.seed,
        source_name=args.model,
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
    if args.heartbeat < 1:
        raise ModelscaleError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
    if not args.join_wait >= 0 or args.join_wait == float("inf"):
        raise ModelscaleError(f"--join-wait must be a finite number of seconds >= 0, got {args.join_wait}")
    return scale_command(
        args.study,
        store=args.store,
        out=args.out,
        jobs=args.jobs,
        gpu_sizes=args.gpu_sizes,
        allow_pickle=args.allow_pickle,
        storage=args.storage,
        worker=args.worker,
        heartbeat=args.heartbeat,
        join_wait=args.join_wait,
    )


def cmd_search(args: argparse.Namespace):
    from modelscale.core.io import read_structured
    from modelscale.search import search

    if args.threads < 1:
        raise ModelscaleError(f"--threads must be >= 1, got {args.threads}")
    space = read_structured(args.space) if args.space else None
    result = search(
        args.model,
        args.data,
        space=space,
        objectives=args.objective or ["accuracy", "bytes"],
        constraints=args.constraint,
        n_trials=args.trials,
        timeout=args.timeout,
        out=args.out,
        storage=args.storage,
        study_name=args.study,
        seed=args.seed,
        resume=args.resume,
        worker=args.worker,
        threads=args.threads,
        allow_pickle=args.allow_pickle,
        heartbeat=args.heartbeat,
        early_stop=not args.no_early_stop,
    )
    from modelscale.report.search_report import search_report

    md, html = search_report(result)
    return result.markdown() + f"\nreport: {md}, {html}", {**result.to_dict(), "report": [str(md), str(html)]}


def cmd_fit_law(args: argparse.Namespace):
    from modelscale.scaling import fit_law_command

    if args.d and args.c:
        raise ModelscaleError("give --d or --c, not both")
    if not 0 <= args.n_boot <= MAX_BOOT:
        raise ModelscaleError(f"--n-boot must be in 0..{MAX_BOOT:,} (200 is typical), got {args.n_boot:,}")
    return fit_law_command(
        args.csv, n=args.n, loss=args.loss, d=args.d, c=args.c, n_boot=args.n_boot, seed=args.seed
    )


def cmd_run(args: argparse.Namespace):
    from modelscale.cli.guard import PartialFailure
    from modelscale.pipeline import run_command

    if args.epochs is not None and args.epochs < 1:
        raise ModelscaleError(f"--epochs must be >= 1, got {args.epochs}")
    text, data = run_command(
        args.recipe,
        store=args.store,
        run_dir=args.run_dir,
        resume=not args.no_resume,
        epochs=args.epochs,
        allow_pickle=args.allow_pickle,
    )
    variants = data["result"]["variants"]
    failed = [v for v in variants if v["status"] != "completed"]
    if failed:
        first = failed[0]
        raise PartialFailure(
            f"{len(failed)} of {len(variants)} variant(s) failed: "
            + "; ".join(f"{v['label']} ({v.get('error') or 'failed'})" for v in failed[:3])
            + (" ..." if len(failed) > 3 else "")
            + f"; see `modelscale runs show {first['run_id']}`",
            (text, data),
        )
    return text, data


def cmd_runs(args: argparse.Namespace):
    from modelscale import pipeline

    if args.action == "list":
        return pipeline.runs_list(store=args.store, recipe=args.recipe)
    if args.action == "compare":
        return pipeline.runs_compare(args.ids, store=args.store)
    if args.action == "delete" and len(args.ids) > 1:
        if not args.yes:
            raise ModelscaleError(
                f"`runs delete` was given {len(args.ids)} run ids; add --yes to delete all of them"
            )
        return pipeline.runs_delete(args.ids, store=args.store)
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
