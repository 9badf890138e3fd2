"""One point of a scaling sweep: build the model for its size, train it through the engine, measure it
(parameters, MACs, training FLOPs, every split's metrics) and record it in the run store.

`execute_point` is safe to run in a worker process (the sweep spawns them with `jobs > 1`).
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from pathlib import Path
from typing import Any

from modelscale.scaling.sweep import RECIPE_PREFIX, SweepConfig, SweepPoint, point_settings


def _subset(dataset: Any, limit: int | None) -> Any:
    if limit is None or len(dataset) <= limit:
        return dataset
    from torch.utils.data import Subset

    step = len(dataset) / limit  # evenly spaced, deterministic
    return Subset(dataset, [int(i * step) for i in range(limit)])


def _examples_seen(steps: int, n: int, batch: int, accum: int) -> int:
    """Training examples consumed by `steps` optimizer steps (epochs of n examples, last batch short)."""
    per_epoch = math.ceil(math.ceil(n / batch) / accum)
    full, rest = divmod(steps, per_epoch)
    return full * n + min(rest * batch * accum, n)


def train_flops_per_example(model: Any, x: Any, y: Any, task: str) -> float:
    """FLOPs of one forward + backward (cross-entropy) on batch (x, y), per example, on a copy of `model`."""
    import copy

    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from modelscale.train.evaluate import logits_of

    probe = copy.deepcopy(model)
    probe.train()
    counter = FlopCounterMode(display=False)
    with counter:
        logits = logits_of(probe(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
    del probe
    return counter.get_total_flops() / x.shape[0]


def _record(
    config: SweepConfig, point: SweepPoint, out_dir: Path, *, allow_pickle: bool = False
) -> dict[str, Any]:
    import torch

    from modelscale.core.trust import file_options
    from modelscale.data import load_data
    from modelscale.measure import count_macs, count_params
    from modelscale.models import build_model
    from modelscale.train import evaluate
    from modelscale.train.runtime import seed_everything

    t0 = time.perf_counter()
    options = dict(config.data_options)
    if point.resolution is not None:
        options["image_size"] = point.resolution
    data = load_data(
        config.data,
        seed=config.data_seed,
        data_fraction=point.data_fraction,
        block_size=config.block_size,
        max_bytes=config.max_bytes,
        **options,
    )
    seed_everything(point.seed)
    model = build_model(
        config.model,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        width=point.width,
        depth=point.depth,
        allow_pickle=allow_pickle,
        **file_options(
            config.model_options, where=f"study {config.name!r} model_options", allow_pickle=allow_pickle
        ),
    )
    params = count_params(model)
    x1 = data.train[0][0].unsqueeze(0)
    macs = count_macs(model, x1).macs
    train_cfg = dataclasses.replace(config.train, seed=point.seed)
    n_train = len(data.train)
    batch = min(train_cfg.batch_size, n_train)
    xb, yb = zip(*(data.train[i] for i in range(batch)))
    flops_per_example = train_flops_per_example(model, torch.stack(xb), torch.stack(yb), data.task)
    from modelscale.engine import train

    result, _ = train(model, data, train_cfg, progress=train_cfg.progress)  # the engine's training step
    examples = _examples_seen(result["steps"], n_train, train_cfg.batch_size, train_cfg.grad_accum)
    metrics = {}
    for split in ("train", "val", "test"):
        scores = evaluate(
            model, _subset(getattr(data, split), config.eval_examples), task=data.task, device=None
        )
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
    lm = data.task == "lm"
    tokens_per_example = data.input_shape[0] if lm else 1
    rec: dict[str, Any] = {
        "key": point.key,
        "model": config.model,
        "data": config.data,
        "task": data.task,
        **dataclasses.asdict(point),
        "params": params.total,
        "params_non_embedding": params.non_embedding,
        "macs_per_example": macs,
        "train_examples": n_train,  # examples (lm: windows) in the train split after the fraction
        "train_size": data.meta["bytes"]["train"] if lm else n_train,  # D: examples, or tokens (bytes) for lm
        "examples_seen": examples,
        "tokens_seen": examples * tokens_per_example if lm else None,
        "epochs": result["epochs"],
        "steps": result["steps"],
        "train_flops": flops_per_example * examples,
        "train_flops_per_example": flops_per_example,
        "flops_6nd": 6.0 * params.non_embedding * examples * tokens_per_example if lm else None,
        "train_seconds": result["seconds"],
        **metrics,
        "metric": "bits_per_byte" if lm else "accuracy",
        "generalization_gap": metrics["test_loss"] - metrics["train_loss"],
        "device": result["device"],
        "model_spec": getattr(model, "modelscale_spec", None),
        "model_path": None,
    }
    if config.save_models:
        from modelscale.core.saving import save_compressed

        path = out_dir / "points" / point.key / "model"
        save_compressed(
            path, model, model_spec=rec["model_spec"], meta={"sweep": config.name, "point": point.key}
        )
        rec["model_path"] = str(path)
    rec["wall_seconds"] = time.perf_counter() - t0
    return rec


NUMERIC_METRICS = (
    "params", "params_non_embedding", "macs_per_example", "train_flops", "flops_6nd", "examples_seen",
    "tokens_seen", "train_loss", "val_loss", "test_loss", "train_accuracy", "val_accuracy", "test_accuracy",
    "train_bits_per_byte", "val_bits_per_byte", "test_bits_per_byte", "generalization_gap", "wall_seconds",
)  # fmt: skip


def execute_point(
    config_data: dict[str, Any],
    point_data: dict[str, Any],
    store_location: str,
    out_dir: str,
    allow_pickle: bool = False,
):
    """Train and record one point; returns (record or None, error or None). Safe to run in a worker process.

    `allow_pickle` is the user's own opt-in (never read from the study file) for pickled weights that
    the study's model_options name."""
    from modelscale.pipeline.store import RunStore

    config = SweepConfig.from_dict(config_data)
    point = SweepPoint(**point_data)
    out = Path(out_dir)
    with RunStore(store_location) as db:
        run_id, _ = db.open_run(
            recipe=RECIPE_PREFIX + config.name,
            variant=point.key,
            label=point.key,
            run_dir=str(out.resolve()),
            config=point_settings(config, point),
            sweep=dataclasses.asdict(point),
        )
        db.start_step(run_id, 0, name="train", kind="train", config=config.train.to_dict())
        t0 = time.time()
        import torch

        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(config.threads)
            rec = _record(config, point, out, allow_pickle=allow_pickle)
        except Exception as exc:  # noqa: BLE001 - one failed point must not stop the sweep
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            db.finish_step(
                run_id, 0, status="failed", error=traceback.format_exc()[-4000:], seconds=time.time() - t0
            )
            db.finish_run(run_id, "failed", error)
            return None, error
        finally:
            torch.set_num_threads(threads)
        rec["run_id"] = run_id
        tags = {"device": rec["device"], "batch_size": config.train.batch_size}
        metrics = [
            {"name": f"sweep.{k}", "value": float(rec[k]), **tags}
            for k in NUMERIC_METRICS
            if rec.get(k) is not None
        ]
        artifacts = [{"kind": "model", "path": rec["model_path"]}] if rec["model_path"] else []
        done = {"summary": rec, "metrics": metrics, "artifacts": artifacts, "seconds": time.time() - t0}
        db.finish_step(run_id, 0, status="completed", **done)
        db.finish_run(run_id, "completed")
    return rec, None
