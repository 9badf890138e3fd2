"""Transfer on real digits: pretrain on classes 0–4, adapt to classes 5–9 with each PEFT method.

The zoo `cnn` is pretrained on digits 0–4 (`split_by_classes`, relabelled 0..4). For each target
budget (fraction of the 5–9 training split; val/test never change) and seed, a copy of it gets a
fresh seeded head and is adapted with: a frozen backbone + random head and no training (the
baseline), linear probe, BitFit, bottleneck adapters, LoRA and full fine-tuning (`adapt`). Each cell
is the mean over seeds (the seed changes the pretraining, the head and the data order). Times are
wall and CPU seconds of the adaptation run (`fit`, AdamW, cosine schedule, the per-method learning
rates of `SUGGESTED_LR`).

    .venv/bin/python benchmarks/transfer.py --json benchmarks/results/transfer_digits.json
    .venv/bin/python benchmarks/transfer.py --quick          # one seed, few epochs (smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from modelscale.core.io import write_json
from modelscale.core.machine import machine_notes
from modelscale.data import load_data
from modelscale.models import build_model
from modelscale.techniques.peft.transfer import METHODS, SUGGESTED_LR, adapt, split_by_classes
from modelscale.train import TrainConfig, evaluate, fit


def machine(threads: int) -> dict:
    return machine_notes(threads) | {"argv": sys.argv[1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.2])
    parser.add_argument("--width", type=float, default=1.0, help="cnn width multiplier")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="adaptation epochs")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--bottleneck", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models, busy cores)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.fractions, args.pretrain_epochs, args.epochs, args.width = 1, [1.0], 5, 3, 0.5
    torch.set_num_threads(args.threads)
    meta = machine(args.threads)
    kw = {"batch_size": 32, "progress": False, "device": "cpu"}

    digits = load_data("digits", seed=0)
    source = split_by_classes(digits, range(5))
    pretrained, source_acc = [], []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = build_model("cnn", num_classes=5, input_shape=(1, 8, 8), width=args.width)
        fit(model, source, TrainConfig(epochs=args.pretrain_epochs, lr=3e-3, seed=seed, **kw))
        source_acc.append(evaluate(model, source.test)["accuracy"])
        pretrained.append(model.eval())
    print(
        f"pretrained cnn w={args.width} on digits 0-4: test acc {statistics.mean(source_acc):.4f} (mean of {args.seeds})"
    )

    rows = []
    for fraction in args.fractions:
        target = split_by_classes(load_data("digits", seed=0, data_fraction=fraction), range(5, 10))
        print(
            f"\ntarget digits 5-9, data_fraction={fraction}: {len(target.train)} training examples, {len(target.test)} test"
        )
        print(
            "| method | trainable params | total params | trainable % | test acc (mean ± sd) | wall s | CPU s |"
        )
        print("|---|---|---|---|---|---|---|")
        for method in METHODS:
            runs = []
            for seed in range(args.seeds):
                config = TrainConfig(epochs=args.epochs, lr=SUGGESTED_LR.get(method, 1e-3), seed=seed, **kw)
                row = adapt(
                    pretrained[seed],
                    target,
                    method,
                    config,
                    seed=seed,
                    lora_rank=args.lora_rank,
                    bottleneck=args.bottleneck,
                )
                runs.append(row)
            acc = [r["test_accuracy"] for r in runs]
            summary = {
                "data_fraction": fraction,
                "train_examples": len(target.train),
                "method": method,
                "lr": SUGGESTED_LR.get(method),
                "trainable_params": runs[0]["trainable_params"],
                "total_params": runs[0]["total_params"],
                "accuracy_mean": statistics.mean(acc),
                "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs),
                "cpu_seconds_mean": statistics.mean(r["train_cpu_seconds"] for r in runs),
                "runs": runs,
            }
            rows.append(summary)
            share = 100 * summary["trainable_params"] / summary["total_params"]
            print(
                f"| {method} | {summary['trainable_params']} | {summary['total_params']} | {share:.1f} | "
                f"{100 * summary['accuracy_mean']:.2f} ± {100 * summary['accuracy_sd']:.2f} | "
                f"{summary['train_seconds_mean']:.1f} | {summary['cpu_seconds_mean']:.1f} |",
                flush=True,
            )
    if args.json is not None:
        write_json(
            args.json,
            {
                "benchmark": "transfer_digits",
                "machine": meta,
                "settings": {
                    "model": f"cnn width={args.width}",
                    "source": "digits classes 0-4",
                    "target": "digits classes 5-9 (relabelled 0-4)",
                    "seeds": args.seeds,
                    "pretrain_epochs": args.pretrain_epochs,
                    "adapt_epochs": args.epochs,
                    "lora_rank": args.lora_rank,
                    "lora_alpha": 2.0 * args.lora_rank,
                    "bottleneck": args.bottleneck,
                    "optimizer": "adamw cosine, batch 32",
                    "learning_rates": SUGGESTED_LR,
                },
                "source_test_accuracy": source_acc,
                "rows": rows,
            },
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
