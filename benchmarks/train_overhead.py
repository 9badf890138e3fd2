"""Overhead of `modelscale.train.fit` over a minimal hand-written PyTorch loop doing the same work.

Both train the same model from the same initial weights on digits with the same recipe: AdamW,
per-step cosine schedule, batch 64, one validation pass per epoch. Runs alternate (hand, fit, fit,
hand, ...) so drift on a shared machine hits both. The headline ratio is the median over repeats of
fit / hand within each adjacent pair (robust to load changing between pairs); the medians and p90 of
each side are reported too, for wall-clock time and for this process's CPU time (on a CPU run the
latter is not inflated by other programs competing for the cores).
The trainer runs with progress=False (no bar), no checkpoints.

    python benchmarks/train_overhead.py --repeats 15 --json benchmarks/results/train_overhead.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modelscale.core.machine import machine_notes
from modelscale.data import load_data
from modelscale.models import build_model
from modelscale.train import TrainConfig, fit


def hand_loop(model: nn.Module, data, epochs: int, lr: float, batch_size: int, device: str = "cpu") -> float:
    """The loop a user would write by hand; returns the last validation accuracy."""
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(data.val, batch_size=256)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = count = 0
        with torch.no_grad():
            for x, y in val_loader:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
                count += len(y)
        acc = correct / count
    return acc


def machine() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return machine_notes() | {"gpu": gpu}


def bench(name: str, make_model, data, epochs: int, repeats: int, lr: float, device: str = "cpu") -> dict:
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=64, schedule="cosine", progress=False, device=device)
    init = make_model().state_dict()
    wall: dict[str, list[float]] = {"hand": [], "fit": []}
    cpu: dict[str, list[float]] = {"hand": [], "fit": []}
    accs: dict[str, list[float]] = {"hand": [], "fit": []}

    def run(kind: str) -> None:
        model = make_model()
        model.load_state_dict(init)
        model.to(device)
        _sync(device)
        w0, c0 = time.perf_counter(), time.process_time()
        if kind == "hand":
            acc = hand_loop(model, data, epochs, lr, 64, device)
        else:
            acc = fit(model, data, cfg).history[-1]["val_accuracy"]
        _sync(device)
        wall[kind].append(time.perf_counter() - w0)
        cpu[kind].append(time.process_time() - c0)
        accs[kind].append(acc)

    run("hand"), run("fit")  # warm-up (first-call imports, allocations), not counted
    for d in (wall, cpu, accs):
        d["hand"].clear(), d["fit"].clear()
    for r in range(repeats):
        for kind in ("hand", "fit") if r % 2 == 0 else ("fit", "hand"):
            run(kind)
    steps = epochs * math.ceil(len(data.train) / 64)
    out = {"model": name, "epochs": epochs, "steps": steps, "repeats": repeats}
    for label, times in (("wall", wall), ("cpu", cpu)):
        hand, fitted = statistics.median(times["hand"]), statistics.median(times["fit"])
        ratio = statistics.median(f / h for h, f in zip(times["hand"], times["fit"]))
        out[label] = {
            "hand_median_s": hand,
            "fit_median_s": fitted,
            "hand_p90_s": _p90(times["hand"]),
            "fit_p90_s": _p90(times["fit"]),
            "ratio_of_medians": fitted / hand,
            "paired_ratio_median": ratio,
            "overhead_pct": 100 * (ratio - 1),
            "overhead_us_per_step": 1e6 * (ratio - 1) * hand / steps,
            "runs_s": times,
        }
    out["val_accuracy_median"] = {k: statistics.median(v) for k, v in accs.items()}
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data("digits")
    models = {
        "cnn (zoo, width 0.5)": lambda: build_model("cnn", width=0.5),
        "mlp (zoo)": lambda: build_model("mlp"),
    }
    info = machine()
    rows = [
        bench(name, make, data, args.epochs, args.repeats, 3e-3, args.device) for name, make in models.items()
    ]
    print(
        f"fit vs hand-written loop, digits train={len(data.train)} val={len(data.val)}, batch 64, "
        f"{args.epochs} epochs, {args.device}, {info['threads']} thread(s), {info['cpu']}, torch {info['torch']}"
    )
    print(
        "ratio = median over repeats of fit/hand within adjacent pairs; cpu = process time (robust to other load)"
    )
    head = f"{'model':<22} {'clock':<5} {'steps':>6} {'hand med s':>11} {'fit med s':>10} {'ratio':>7} {'overhead':>9} {'us/step':>8}"
    print(head)
    for r in rows:
        for label in ("wall", "cpu"):
            m = r[label]
            print(
                f"{r['model']:<22} {label:<5} {r['steps']:>6} {m['hand_median_s']:>11.3f} {m['fit_median_s']:>10.3f} "
                f"{m['paired_ratio_median']:>7.3f} {m['overhead_pct']:>8.1f}% {m['overhead_us_per_step']:>8.0f}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"benchmark": "train_overhead", "device": args.device, "machine": info, "results": rows},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
