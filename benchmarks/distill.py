"""Knowledge distillation on real digits: a half-width cnn student with and without a full-width teacher.

Teacher: zoo `cnn` (width 1.0) trained on the full digits training split. Student: zoo `cnn` with
width 0.5, trained from the same initial weights and data order (same seed) either on labels alone
("plain") or with `distill` (soft targets, optionally feature hints), for several training-set
budgets (`data_fraction`; the val/test splits never change). Every cell is the mean over seeds;
"wins" counts seeds where the variant's test accuracy beats plain's. Test NLL is reported too: it
moves far more than accuracy. Times are this process's wall and CPU seconds per training run.

    .venv/bin/python benchmarks/distill.py --json benchmarks/results/distill_digits.json
    .venv/bin/python benchmarks/distill.py --quick          # one seed, two budgets (smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from modelscale.core.io import write_json
from modelscale.core.machine import machine_notes
from modelscale.data import load_data
from modelscale.measure import count_params
from modelscale.models import build_model
from modelscale.techniques.distill import DistillConfig, distill
from modelscale.train import TrainConfig, evaluate, fit

VARIANTS = {
    "plain": None,
    "kd a=0.1 T=8": DistillConfig(alpha=0.1, temperature=8.0),
    "kd a=0.5 T=4": DistillConfig(alpha=0.5, temperature=4.0),
    "kd a=0.1 T=8 + hints": DistillConfig(
        alpha=0.1, temperature=8.0, feature_pairs={"features.2": "features.2"}, feature_weight=1.0
    ),
}


def machine(threads: int) -> dict:
    return machine_notes(threads) | {"argv": sys.argv[1:]}


def train_student(data, teacher, variant: DistillConfig | None, seed: int, epochs: int) -> dict:
    torch.manual_seed(seed)
    student = build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)
    config = TrainConfig(epochs=epochs, lr=3e-3, batch_size=32, seed=seed, progress=False, device="cpu")
    wall, cpu = time.perf_counter(), time.process_time()
    if variant is None:
        fit(student, data, config)
    else:
        distill(student, teacher, data, config, variant)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    metrics = evaluate(student, data.test)
    return {"accuracy": metrics["accuracy"], "nll": metrics["loss"], "wall_s": wall, "cpu_s": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3, 1.0])
    parser.add_argument("--epochs", type=int, default=20, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny models, busy cores)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.fractions, args.epochs, args.teacher_epochs = 1, [0.2, 1.0], 5, 5
    torch.set_num_threads(args.threads)
    meta = machine(args.threads)

    full = load_data("digits", seed=0)
    torch.manual_seed(0)
    teacher = build_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    fit(
        teacher,
        full,
        TrainConfig(epochs=args.teacher_epochs, lr=3e-3, batch_size=64, progress=False, device="cpu"),
    )
    teacher_row = {
        "accuracy": evaluate(teacher, full.test)["accuracy"],
        "params": count_params(teacher).total,
    }
    student_params = count_params(build_model("cnn", num_classes=10, input_shape=(1, 8, 8), width=0.5)).total
    print(f"teacher cnn w=1.0: {teacher_row['params']} params, test acc {teacher_row['accuracy']:.4f}")
    print(f"student cnn w=0.5: {student_params} params; {args.seeds} seeds, {args.epochs} epochs\n")

    rows = []
    print(
        "| data_fraction | train ex. | variant | test acc (mean ± sd) | Δ acc vs plain | wins | test NLL | wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for fraction in args.fractions:
        data = load_data("digits", seed=0, data_fraction=fraction)
        runs = {
            name: [train_student(data, teacher, v, s, args.epochs) for s in range(args.seeds)]
            for name, v in VARIANTS.items()
        }
        plain = [r["accuracy"] for r in runs["plain"]]
        for name, results in runs.items():
            acc = [r["accuracy"] for r in results]
            row = {
                "data_fraction": fraction,
                "train_examples": len(data.train),
                "variant": name,
                "config": None if VARIANTS[name] is None else VARIANTS[name].to_dict(),
                "accuracy_mean": statistics.mean(acc),
                "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "delta_vs_plain": statistics.mean(acc) - statistics.mean(plain),
                "wins_vs_plain": sum(a > b for a, b in zip(acc, plain, strict=True)),
                "nll_mean": statistics.mean(r["nll"] for r in results),
                "wall_s_mean": statistics.mean(r["wall_s"] for r in results),
                "cpu_s_mean": statistics.mean(r["cpu_s"] for r in results),
                "runs": results,
            }
            rows.append(row)
            wins = "" if name == "plain" else f"{row['wins_vs_plain']}/{args.seeds}"
            delta = "" if name == "plain" else f"{100 * row['delta_vs_plain']:+.2f} pt"
            print(
                f"| {fraction} | {row['train_examples']} | {name} | {100 * row['accuracy_mean']:.2f} ± "
                f"{100 * row['accuracy_sd']:.2f} | {delta} | {wins} | {row['nll_mean']:.3f} | "
                f"{row['wall_s_mean']:.1f} | {row['cpu_s_mean']:.1f} |",
                flush=True,
            )
    if args.json is not None:
        write_json(
            args.json,
            {
                "benchmark": "distill_digits",
                "machine": meta,
                "settings": {
                    "seeds": args.seeds,
                    "student_epochs": args.epochs,
                    "teacher_epochs": args.teacher_epochs,
                    "student": "cnn width=0.5",
                    "teacher": "cnn width=1.0",
                    "optimizer": "adamw lr=3e-3 cosine, batch 32",
                },
                "teacher": teacher_row,
                "student_params": student_params,
                "rows": rows,
            },
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
