"""benchmarks/torchvision_zoo.py one process per model, merged into one results file after each model.

Each model runs in its own process (`torchvision_zoo.py --models NAME --side S --threads T --json F`),
smallest published parameter count first, so a crash or a large model's memory ends only that model,
and the merged file is rewritten after every model: a sweep that is cut keeps what finished and lists
the rest under `not_run`. `--base` starts from an earlier merged file: its models are kept, and a model
run again replaces the pairs it ran (with `--techniques`, only those pairs). The merged file holds the
summary counts (ok / refused / error / timeout), every error and refusal grouped by message, the models
not run, the commands, and machine notes of each model's process (the load before and after it).

    .venv/bin/python benchmarks/torchvision_zoo_sweep.py --out benchmarks/results/torchvision_zoo_sweep.json \\
        --side 32 --threads 1 --all --pair-limit 900 --model-limit 3600
    .venv/bin/python benchmarks/torchvision_zoo_sweep.py --out OUT --base OUT --models resnet18 \\
        --techniques pt2e_int8           # rerun one pair, merged into OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torchvision

from modelscale.core.io import write_json
from modelscale.core.machine import machine_notes
from modelscale.models.torchvision_zoo import published

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from torchvision_zoo import generic_techniques, summarize  # noqa: E402

ALL = torchvision.models.list_models(module=torchvision.models)


def by_message(models: dict[str, Any], status: str, width: int = 70) -> dict[str, list[str]]:
    """'model/technique' pairs with `status`, grouped by the first `width` characters of the message."""
    groups: dict[str, list[str]] = {}
    for name, entry in sorted(models.items()):
        for tech, row in sorted(entry["techniques"].items() if isinstance(entry["techniques"], dict) else []):
            if row["status"] == status:
                groups.setdefault(row.get("message", "")[:width], []).append(f"{name}/{tech}")
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def merge(merged: dict[str, Any], name: str, new: dict[str, Any] | None, process: dict[str, Any]) -> None:
    """Fold one model process's file into `merged` (pairs it ran replace the same pairs)."""
    models = merged.setdefault("models", {})
    old = models.get(name)
    if new is None:  # the process left no file: keep the old entry, note the attempt
        if old is not None:
            old["last_process"] = process
        else:
            models[name] = {"techniques": "not run", "process": process}
        return
    if old is not None and isinstance(old.get("techniques"), dict) and isinstance(new["techniques"], dict):
        techniques = {**old["techniques"], **new["techniques"]}
        if old.get("side") != new.get("side"):
            stale = [t for t in old["techniques"] if t not in new["techniques"]]
            if stale:
                new["stale_side"] = f"{', '.join(stale)} ran at side {old.get('side')}"
        new = new | {"techniques": dict(sorted(techniques.items()))}
    models[name] = new | {"process": process}


def finish(merged: dict[str, Any], queued: list[str]) -> None:
    models = merged["models"]
    done = [n for n in ALL if n in models and models[n]["techniques"] != "not run"]
    merged["not_run"] = [n for n in ALL if n not in done]
    expected = generic_techniques()
    merged["pairs_not_run"] = [
        f"{n}/{t}"
        for n in done
        if isinstance(models[n]["techniques"], dict)
        for t in expected
        if t not in models[n]["techniques"]
    ]
    merged["reruns_not_done"] = [n for n in queued if n in done]
    merged["partial"] = bool(merged["not_run"] or merged["pairs_not_run"] or merged["reruns_not_done"])
    merged["summary"] = summarize({n: models[n] for n in done}) | {"models_not_run": len(merged["not_run"])}
    merged["errors_by_message"] = by_message(models, "error")
    merged["refused_by_message"] = by_message(models, "refused")
    merged["timeouts"] = by_message(models, "timeout", width=0).get("", [])
    merged["machine"] = machine_notes(packages=("torch", "torchvision", "torch_pruning", "peft"))
    merged["models"] = dict(sorted(models.items()))


def missing_pairs(merged: dict[str, Any], timeouts: bool) -> dict[str, list[str] | None]:
    """model -> the generic techniques it has no result for (None: the model never ran), in zoo order."""
    expected = generic_techniques()
    models = merged.get("models", {})
    todo: dict[str, list[str] | None] = {}
    for name in ALL:
        rows = models.get(name, {}).get("techniques")
        if not isinstance(rows, dict):
            todo[name] = None
            continue
        lacking = [t for t in expected if t not in rows or (timeouts and rows[t]["status"] == "timeout")]
        if lacking:
            todo[name] = lacking
    return todo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the merged results file")
    parser.add_argument("--base", type=Path, help="an earlier merged file to start from")
    parser.add_argument("--models", nargs="*", help="default: every classification model the base lacks")
    parser.add_argument("--techniques", nargs="*", help="only these techniques (default: every generic one)")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="include models over 100 M parameters")
    parser.add_argument("--pair-limit", type=float, default=0, help="passed to torchvision_zoo.py")
    parser.add_argument("--model-limit", type=float, default=0, help="seconds per model process (0: none)")
    parser.add_argument("--in-order", action="store_true", help="run --models as given, not smallest first")
    parser.add_argument("--stop-after", type=float, default=0, help="start no model after this many seconds")
    parser.add_argument(
        "--hard-stop", type=float, default=0, help="kill the model running at this many seconds (0: never)"
    )
    parser.add_argument(
        "--missing", action="store_true",
        help="per model, only the techniques the base lacks (models it lacks entirely: all of them)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-timeouts", action="store_true", help="with --missing: also the pairs that timed out"
    )
    parser.add_argument("--note", help="a note kept in the merged file (replaces the base's)")
    args = parser.parse_args(argv)
    merged: dict[str, Any] = json.loads(args.base.read_text()) if args.base else {}
    if "machine" in merged:
        merged.setdefault("base_machine", merged["machine"])  # the machine notes the base was written with
    if args.note:
        merged["note"] = args.note
    merged["benchmark"] = (
        "torchvision_zoo technique sweep: every torchvision classifier x every generic technique"
    )
    merged.setdefault("commands", [merged.pop("command")] if "command" in merged else [])
    merged.setdefault("models", {})
    todo = missing_pairs(merged, args.retry_timeouts) if args.missing else {}
    queue = args.models or (list(todo) if args.missing else [n for n in ALL if n not in merged["models"]])
    if args.missing:
        queue = [n for n in queue if n in todo]
    if not args.in_order:
        queue = sorted(queue, key=lambda n: published(n)["params"])
    command = "benchmarks/torchvision_zoo_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    merged["commands"].append(command)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        while queue:
            if args.stop_after and time.perf_counter() - started > args.stop_after:
                break
            name = queue.pop(0)
            out = Path(tmp) / f"{name}.json"
            child = [
                sys.executable,
                str(HERE / "torchvision_zoo.py"),
                "--models",
                name,
                "--side",
                str(args.side),
            ]
            child += [
                "--threads",
                str(args.threads),
                "--pair-limit",
                str(args.pair_limit),
                "--json",
                str(out),
            ]
            techniques = args.techniques
            if args.missing and todo[name] is not None:
                techniques = [t for t in todo[name] if not args.techniques or t in args.techniques]
                if not techniques:
                    continue
            child += ["--all"] * args.all + (["--techniques", *techniques] if techniques else [])
            begun = time.perf_counter()
            limits = [args.model_limit] * bool(args.model_limit)
            limits += [args.hard_stop - (begun - started)] * bool(args.hard_stop)
            if limits and min(limits) <= 0:
                queue.insert(0, name)
                break
            try:
                # a killed child leaves its saved models in its TMPDIR: ours, removed at the end
                env = os.environ | {"TMPDIR": tmp}
                run = subprocess.run(child, timeout=min(limits, default=None), check=False, env=env)
                rc: int | str = run.returncode
            except subprocess.TimeoutExpired:
                rc = f"killed after {time.perf_counter() - begun:.0f} s (--model-limit / --hard-stop)"
            report = json.loads(out.read_text()) if out.exists() else None
            process = {"rc": rc, "seconds": round(time.perf_counter() - begun, 1)}
            if report is not None:
                process |= {k: report["machine"].get(k) for k in ("date", "load_before", "load_after")}
                process["command"] = report["machine"]["command"].replace(str(out), f"{name}.json")
                if report.get("unfinished"):
                    process["unfinished"] = True
            merge(merged, name, report["models"].get(name) if report else None, process)
            finish(merged, queue)
            write_json(args.out, merged)
            print(f"{name}: rc {rc}, {process['seconds']} s; merged {merged['summary']}", flush=True)
    finish(merged, queue)
    write_json(args.out, merged)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
