"""Every torchvision classifier through every generic technique, saved and reloaded; MACs vs published.

For each model (`torchvision.models.list_models`, all 80 by default):

1. MACs: `count_macs` on the meta device at the published resolution against torchvision's `_ops`, and
   the parameter count against `num_params` (inception_v3 adds back the aux head its checkpoint keeps).
2. For each technique whose registration applies to any model (not `hf`-only): build
   `torchvision:NAME` at `--side` pixels (seeded), apply the default config with a synthetic batch as
   example inputs and calibration, run its finalize step, save the folder with the zoo spec, reload it
   through the zoo (`load_compressed`) and compare outputs. Each pair ends as "ok" (with the max
   absolute reload difference, which must be 0 up to float noise), "refused" (a one-line
   ModelscaleError: the message is kept) or "error" (any other exception: a bug). For structured
   pruning the record's MACs are compared with `count_macs` on the same model and inputs.

Synthetic inputs: this checks that things run and round-trip, not accuracy. Times are wall seconds on
whatever the machine is doing (the load is recorded). Models over `--max-params` are left out unless
`--all` (a 600 M-parameter model copied and saved per technique needs tens of GB). With
`--pair-limit S` a pair still running after S seconds ends as "timeout" (checked between Python
bytecodes, so a long single kernel finishes first). With `--json` the file is rewritten after every
pair, so a run that is cut keeps what finished. benchmarks/torchvision_zoo_sweep.py runs one process
per model and merges the files.

    .venv/bin/python benchmarks/torchvision_zoo.py --json benchmarks/results/torchvision_zoo.json
    .venv/bin/python benchmarks/torchvision_zoo.py --models resnet18 vit_b_16 --techniques lora
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.core.io import write_json
from modelscale.core.machine import machine_notes
from modelscale.core.registry import get_technique, list_techniques
from modelscale.measure import count_macs
from modelscale.models import build_model
from modelscale.models.loading import ModelBundle, build_for, load_compressed, save_model_dir
from modelscale.models.torchvision_zoo import published

# MaxViT's 7x7 partitions; Inception's stem needs >= 75; AlexNet's three 3x3/2 max pools need >= 63
MIN_SIDE = {"maxvit_t": 224, "inception_v3": 96, "alexnet": 64}


def side_for(name: str, side: int) -> int:
    """`side`, raised to the model's minimum, and for a ViT rounded up to a multiple of its patch."""
    side = max(side, MIN_SIDE.get(name, 0))
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        side = -(-side // patch) * patch
    return side


class PairTimeout(Exception):
    """A technique ran past --pair-limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise PairTimeout in this thread after `seconds` (0: no limit)."""
    if seconds <= 0:
        yield
        return

    def expire(_signum, _frame):
        raise PairTimeout(f"still running after {seconds:g} s (--pair-limit)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def generic_techniques() -> list[str]:
    return [n for n in list_techniques() if get_technique(n).applies_to != "hf"]


def on_meta(name: str, side: int) -> nn.Module:
    shape = (3, side, side)
    try:
        with torch.device("meta"):
            return build_model(f"torchvision:{name}", num_classes=1000, input_shape=shape)
    except NotImplementedError:  # regnet's builder computes widths with real tensors
        return build_model(f"torchvision:{name}", num_classes=1000, input_shape=shape).to("meta")


def check_macs(name: str) -> dict[str, Any]:
    ref = published(name)
    side = ref["resolution"]
    model = on_meta(name, side)
    gmacs = count_macs(model, torch.empty(1, 3, side, side, device="meta")).macs / 1e9
    params = sum(p.numel() for p in model.parameters())
    if name == "inception_v3":
        with torch.device("meta"):
            full = torchvision.models.get_model(name, weights=None, aux_logits=True, init_weights=False)
        params += sum(p.numel() for p in full.AuxLogits.parameters())
    return {
        "resolution": side,
        "gmacs": round(gmacs, 4),
        "published_gmacs": ref["gmacs"],
        "macs_error": round((gmacs - ref["gmacs"]) / ref["gmacs"], 5),
        "params": params,
        "published_params": ref["params"],
    }


def run_pair(name: str, technique: str, side: int, out_dir: Path, limit: float = 0) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        with time_limit(limit):
            return _run_pair(name, technique, side, out_dir)
    except PairTimeout as exc:
        return {"status": "timeout", "message": str(exc), "seconds": round(time.perf_counter() - start, 2)}


def _run_pair(name: str, technique: str, side: int, out_dir: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = build_for(f"torchvision:{name}", input_shape=(3, side, side), num_classes=10)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, side, side, generator=g)
    calibration = [(torch.rand(2, 3, side, side, generator=g), torch.tensor([0, 1])) for _ in range(2)]
    tech = get_technique(technique)
    start = time.perf_counter()
    stage = "apply"
    try:
        result = apply(
            bundle.model,
            tech.config_cls(),
            example_inputs=x,
            calibration=calibration,
            loss_fn=nn.functional.cross_entropy,
        )
        record = result.record
        if tech.has_lifecycle:
            done = tech.finalize(result.model, tech.config_cls())
            record = done if done is not None else record
        stage = "forward"
        with torch.no_grad():
            out = result.model.eval()(x)
        if out.shape != (2, 10) or not bool(torch.isfinite(out).all()):
            return {"status": "error", "stage": stage, "message": f"output {tuple(out.shape)} / not finite"}
        row: dict[str, Any] = {"status": "ok"}
        if "macs_before" in record.summary:
            row["record_macs_after"] = record.summary["macs_after"]
            row["profile_macs_after"] = count_macs(result.model, x).macs
            row["record_macs_before"] = record.summary["macs_before"]
            row["profile_macs_before"] = count_macs(bundle.model, x).macs
        stage = "save"
        folder = out_dir / f"{name}-{technique}"
        save_model_dir(folder, ModelBundle(result.model, bundle.spec, [record]))
        row["file_bytes"] = (folder / "model.safetensors").stat().st_size
        stage = "reload"
        reloaded = load_compressed(folder).eval()
        with torch.no_grad():
            again = reloaded(x)
        row["reload_max_abs_diff"] = float((again - out).abs().max())
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row
    except PairTimeout:
        raise
    except ModelscaleError as exc:
        return {"status": "refused", "stage": stage, "message": str(exc)[:400]}
    except Exception as exc:  # a bare exception escaping is a bug: keep where it came from
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return {
            "status": "error",
            "stage": stage,
            "message": f"{type(exc).__name__}: {str(exc)[:300]} ({Path(last.filename).name}:{last.lineno})",
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="torchvision names (default: all classification models)")
    parser.add_argument("--techniques", nargs="*", help="technique names (default: every generic one)")
    parser.add_argument("--side", type=int, default=64, help="input height and width for the technique runs")
    parser.add_argument(
        "--max-params", type=float, default=100e6, help="leave out larger models unless --all"
    )
    parser.add_argument("--all", action="store_true", help="include models over --max-params")
    parser.add_argument("--no-techniques", action="store_true", help="only the MAC/parameter check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--pair-limit", type=float, default=0, help="seconds a model/technique pair may run (0: no limit)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models or torchvision.models.list_models(module=torchvision.models)
    techniques = args.techniques or generic_techniques()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    started = time.perf_counter()
    command = "benchmarks/torchvision_zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def write(final: bool) -> dict[str, Any]:
        summary = summarize(results) | {"wall_seconds": round(time.perf_counter() - started, 1)}
        if args.json:
            notes = machine_notes(
                threads=args.threads, packages=("torch", "torchvision", "torch_pruning", "peft")
            )
            notes["load_before"] = load_before
            notes["load_after"] = os.getloadavg()
            notes["command"] = command
            body = {"summary": summary, "side": args.side, "machine": notes, "models": results}
            write_json(args.json, body | ({} if final else {"unfinished": True}))
        return summary

    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            entry: dict[str, Any] = {"macs": check_macs(name)}
            results[name] = entry
            m = entry["macs"]
            print(
                f"{name:22s} {m['gmacs']:9.3f} G vs {m['published_gmacs']:9.3f} ({m['macs_error']:+.2%})",
                flush=True,
            )
            too_big = m["params"] > args.max_params and not args.all
            if args.no_techniques or too_big:
                entry["techniques"] = "left out" + (
                    f" (params {m['params']:,} > --max-params)" if too_big else ""
                )
                continue
            side = side_for(name, args.side)
            entry["side"] = side
            entry["techniques"] = {}
            for technique in techniques:
                row = run_pair(name, technique, side, Path(tmp), args.pair_limit)
                entry["techniques"][technique] = row
                detail = row.get("message", "")[:110] or f"{row.get('seconds')} s"
                print(f"    {technique:20s} {row['status']:8s} {detail}", flush=True)
                for folder in Path(tmp).iterdir():  # keep the disk footprint to one model
                    for f in folder.iterdir():
                        f.unlink()
                    folder.rmdir()
                write(final=False)
    summary = write(final=True)
    print(summary)
    return 1 if summary["error"] else 0


def summarize(results: dict[str, Any]) -> dict[str, int]:
    """Counts over every model entry (MAC check) and every pair (ok / refused / error / timeout)."""
    pairs = [
        r for e in results.values() if isinstance(e.get("techniques"), dict) for r in e["techniques"].values()
    ]
    return {
        "models": len(results),
        "macs_within_2pct": sum(abs(e["macs"]["macs_error"]) < 0.02 for e in results.values()),
        "params_match": sum(e["macs"]["params"] == e["macs"]["published_params"] for e in results.values()),
        "pairs": len(pairs),
        "ok": sum(r["status"] == "ok" for r in pairs),
        "refused": sum(r["status"] == "refused" for r in pairs),
        "error": sum(r["status"] == "error" for r in pairs),
        "timeout": sum(r["status"] == "timeout" for r in pairs),
        "reload_exact": sum(r.get("reload_max_abs_diff", 1) <= 1e-5 for r in pairs if r["status"] == "ok"),
        "record_macs_equal_profile": sum(
            r["record_macs_after"] == r["profile_macs_after"] for r in pairs if "record_macs_after" in r
        ),
    }


if __name__ == "__main__":
    raise SystemExit(main())
