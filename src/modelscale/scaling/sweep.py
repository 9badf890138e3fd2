"""Scaling sweeps: train a model family over widths × depths (or compound φ) × data fractions × seeds.

Every point (width, depth, data fraction, seed) is an independent training run recorded in the
pipeline's `RunStore` (recipe `scale:<name>`, one run per point, one step "train" whose summary is the
point's record and whose metrics are its numbers). A re-run skips points the store already has as
completed with the same settings, so a sweep resumes where it stopped; with `jobs > 1` points run in
parallel processes (spawned), each writing to the store itself (SQLite in WAL mode takes concurrent
writers).

Per point: parameters (total and non-embedding, Kaplan et al. 2020), MACs per example (one forward,
`FlopCounterMode`), training compute actually spent — FLOPs of one forward+backward of one training
batch counted by `FlopCounterMode` (matrix products, convolutions, attention; elementwise ops not
counted), per example, × examples seen; validation passes are not included — and for transformers the
estimate 6·N·D (N non-embedding parameters, D tokens seen), wall time, final train/val/test loss and
metric (accuracy; bits per byte for language models) evaluated after training, and the generalization
gap = test loss − train loss.

Compound scaling (Tan & Le 2019, EfficientNet): for each φ, depth × α^φ, width × β^φ and resolution
× γ^φ with α·β²·γ² ≈ 2 (checked within 10 %), so FLOPs grow about 2^φ. Resolution is scaled only for
`imagefolder:` data (its `image_size` option); other sources have a fixed input size and the sweep
says so in its notes.

Example::

    from modelscale.scaling.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(model="cnn", data="digits", widths=[0.25, 1.0], data_fractions=[0.5, 1.0],
                      train={"epochs": 20, "batch_size": 32, "lr": 3e-3})
    result = run_sweep(cfg, store="runs/modelscale.db", out_dir="runs/scale/cnn", jobs=2)
    print(result.executed, result.skipped, result.points[0]["test_loss"])
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from modelscale.core.config import Config, check_range, param
from modelscale.core.errors import ModelscaleError
from modelscale.train.config import TrainConfig

RECIPE_PREFIX = "scale:"
COMPOUND_TOLERANCE = 0.1  # |α·β²·γ² − 2| / 2 allowed
LOWER_BOUNDS = {"block_size": 1, "threads": 1, "n_boot": 0, "max_bytes": 1, "eval_examples": 1}
RESOLUTION_SOURCES = ("imagefolder",)  # sources whose input resolution can be set (option image_size)
# Settings that change a point's result: a stored point is reused only when these match.
POINT_KEYS = (
    "model", "model_options", "data", "data_options", "data_seed", "train", "block_size", "max_bytes",
    "eval_examples",
)  # fmt: skip


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=20, batch_size=32, lr=3e-3, progress=False)


@dataclass(kw_only=True)
class SweepConfig(Config):
    """A scaling study: one model family over sizes × data fractions × seeds, with one training recipe."""

    type: ClassVar[str] = "sweep"
    version: ClassVar[int] = 1

    name: str = param("sweep", "study name; the run store lists its points under recipe scale:<name>")
    model: str = param("cnn", "zoo model family: mlp, cnn, gpt, torchvision:<name> ...")
    model_options: dict[str, Any] = param(
        factory=dict, help="extra build_model options (gpt: n_layer, n_head, n_embd) scaled by width/depth"
    )
    data: str = param("digits", "data source: digits, pystdlib, text:<path>, imagefolder:<dir> ...")
    data_options: dict[str, Any] = param(factory=dict, help="source options for load_data (image_size ...)")
    data_seed: int = param(0, "seed of the train/val/test split, fixed so every point is scored alike")
    widths: tuple[float, ...] = param((1.0,), "width multipliers (channels, hidden units, n_embd)")
    depths: tuple[float, ...] = param((1.0,), "depth multipliers (blocks, layers)")
    gpu_widths: tuple[float, ...] = param(
        (), "extra widths run only with gpu_sizes (scale_command(..., gpu_sizes=True)): larger models"
    )
    compound: tuple[float, ...] = param(
        (), "EfficientNet φ values; when given they replace the widths × depths grid"
    )
    alpha: float = param(1.2, "compound scaling: depth multiplier per unit φ")
    beta: float = param(1.1, "compound scaling: width multiplier per unit φ")
    gamma: float = param(1.15, "compound scaling: resolution multiplier per unit φ (imagefolder only)")
    data_fractions: tuple[float, ...] = param((1.0,), "fractions of the train split, each in (0, 1]")
    seeds: tuple[int, ...] = param((0,), "training seeds (initialization and data order)")
    train: TrainConfig = param(factory=_default_train, help="training recipe for every point")
    block_size: int = param(128, "language models: context length in bytes")
    max_bytes: int | None = param(
        None, "language models: cap on the corpus bytes (pystdlib defaults to 8 MB)"
    )
    eval_examples: int | None = param(None, "evaluate at most this many examples per split (None: all)")
    fit_loss: Literal["test_loss", "val_loss"] = param("test_loss", "loss the scaling laws are fitted to")
    n_boot: int = param(200, "bootstrap resamples for the law intervals (0: none)")
    save_models: bool = param(True, "keep each point's trained weights (compress_or_train_small needs them)")
    threads: int = param(1, "torch CPU threads per point (per process with jobs > 1)")
    compress_or_train_small: bool = param(
        False, "also compress the largest model and compare it with the family trained from scratch"
    )

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        super().__post_init__()

    def validate(self) -> None:
        for name in ("widths", "depths", "data_fractions", "seeds"):
            values = getattr(self, name)
            if not values:
                raise ModelscaleError(f"{name} must list at least one value")
            if len(set(values)) != len(values):
                raise ModelscaleError(f"{name} lists a value twice: {list(values)}; remove the duplicate")
        for w in (*self.widths, *self.gpu_widths, *self.depths):
            check_range("width/depth multiplier", w, 1e-6)
        for f in self.data_fractions:
            check_range("data fraction", f, 1e-9, 1.0)
        for s in self.seeds:
            check_range("seed", s, 0)
        for name in ("alpha", "beta", "gamma"):
            check_range(name, getattr(self, name), 1.0)
        for name, lo in LOWER_BOUNDS.items():
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), lo)
        if self.compound:
            if tuple(self.widths) != (1.0,) or tuple(self.depths) != (1.0,) or self.gpu_widths:
                raise ModelscaleError(
                    "give compound φ values or widths/depths, not both; compound sets width β^φ and depth α^φ"
                )
            product = self.alpha * self.beta**2 * self.gamma**2
            if abs(product - 2.0) > 2.0 * COMPOUND_TOLERANCE:
                raise ModelscaleError(
                    f"compound scaling needs α·β²·γ² ≈ 2 (FLOPs double per unit φ); got {product:.3f} "
                    f"from α={self.alpha}, β={self.beta}, γ={self.gamma}; EfficientNet uses 1.2, 1.1, 1.15"
                )
        if not self.name or any(c in self.name for c in "/\\"):
            raise ModelscaleError(f"name must be a non-empty word without slashes, got {self.name!r}")


@dataclass(frozen=True)
class SweepPoint:
    """One training run of the sweep."""

    width: float
    depth: float
    data_fraction: float
    seed: int
    phi: float | None = None
    resolution: int | None = None

    @property
    def key(self) -> str:
        size = f"phi{self.phi:g}" if self.phi is not None else f"w{self.width:g}-d{self.depth:g}"
        return f"{size}-f{self.data_fraction:g}-s{self.seed}"


def sweep_points(config: SweepConfig, *, gpu_sizes: bool = False) -> tuple[list[SweepPoint], list[str]]:
    """Every point of the sweep (sizes × data fractions × seeds) and notes on what was skipped."""
    notes: list[str] = []
    sizes: list[tuple[float, float, float | None, int | None]] = []
    if config.compound:
        can_resize = config.data.partition(":")[0].strip().lower() in RESOLUTION_SOURCES
        base = int(config.data_options.get("image_size", 32))
        for phi in config.compound:
            res = round(base * config.gamma**phi) if can_resize else None
            sizes.append((config.beta**phi, config.alpha**phi, phi, res))
        if not can_resize:
            notes.append(
                f"compound scaling: resolution not scaled ({config.data!r} has a fixed input size; only "
                f"{', '.join(RESOLUTION_SOURCES)} data can be resized), so FLOPs grow by α·β² = "
                f"{config.alpha * config.beta**2:.3f} per unit φ instead of α·β²·γ² ≈ 2"
            )
    else:
        widths = list(config.widths) + (list(config.gpu_widths) if gpu_sizes else [])
        if config.gpu_widths and not gpu_sizes:
            notes.append(f"gpu_widths {list(config.gpu_widths)} skipped (run with gpu_sizes to include them)")
        sizes = [(w, d, None, None) for w, d in itertools.product(dict.fromkeys(widths), config.depths)]
    points = [
        SweepPoint(w, d, f, s, phi, res)
        for (w, d, phi, res), f, s in itertools.product(sizes, config.data_fractions, config.seeds)
    ]
    return points, notes


@dataclass
class SweepResult:
    """What a sweep did: one record per point (from this run or from the store), and counts."""

    config: SweepConfig
    points: list[dict[str, Any]]  # records of completed points (see module docstring)
    executed: int  # points trained in this call
    skipped: int  # points found completed in the store
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"key", "error"}
    out_dir: str = ""
    store: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**out, "config": self.config.to_dict()}


def point_settings(config: SweepConfig, point: SweepPoint) -> dict[str, Any]:
    """The settings that decide a point's result (stored as the run's config; compared on resume)."""
    full = config.to_dict()
    out = {k: full[k] for k in POINT_KEYS}
    out["train"] = {k: v for k, v in out["train"].items() if k not in ("progress", "device")}
    out["point"] = dataclasses.asdict(point)
    return out


# --- one point (runs in the parent or in a spawned worker) -------------------------------------------
def _stored_points(db: Any, config: SweepConfig, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Completed points of this sweep in the store: key -> {"settings", "record"}."""
    found = {}
    for run in db.runs(recipe=RECIPE_PREFIX + config.name, run_dir=str(out_dir.resolve())):
        if run["status"] != "completed":
            continue
        steps = db.steps(run["id"])
        if steps and steps[0]["status"] == "completed" and isinstance(steps[0].get("summary"), dict):
            found[run["variant"]] = {"settings": run["config"], "record": steps[0]["summary"]}
    return found


def _line(i: int, total: int, config: SweepConfig, rec: dict[str, Any], status: str) -> str:
    from modelscale.core.formatting import human

    metric = rec["metric"]
    value = rec[f"test_{metric}"]
    shown = f"bpb {value:.3f}" if metric == "bits_per_byte" else f"acc {100 * value:.2f}%"
    return (
        f"[{i}/{total}] {config.name} {rec['key']}: {status}  params {human(rec['params'])}  "
        f"train {rec['train_loss']:.4f}  test {rec['test_loss']:.4f}  {shown}  "
        f"C {rec['train_flops']:.3g} FLOPs  {rec['wall_seconds']:.1f} s"
    )


def run_sweep(
    config: SweepConfig | dict[str, Any],
    *,
    store: Any = None,
    out_dir: str | Path,
    progress: bool = True,
    jobs: int = 1,
    gpu_sizes: bool = False,
    allow_pickle: bool = False,
) -> SweepResult:
    """Run every point not already completed in `store` (default runs/modelscale.db); see the module docstring.

    `out_dir` holds the points' weights (with save_models) and identifies the sweep in the store
    together with its name. `jobs` > 1 runs points in that many spawned processes. `allow_pickle` is the
    user's own opt-in to pickled weights named in model_options; the study file cannot grant it.
    """
    from modelscale.pipeline.printer import Printer
    from modelscale.pipeline.store import open_store

    if isinstance(config, dict):
        config = SweepConfig.from_dict(config)
    if not isinstance(config, SweepConfig):
        raise ModelscaleError(f"expected a SweepConfig or a mapping, got {type(config).__name__}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ModelscaleError(f"jobs must be an integer >= 1, got {jobs!r}")
    from modelscale.models.registry import resolve

    resolve(config.model)  # unknown model: fail before any point runs
    from modelscale.core.trust import file_options

    file_options(
        config.model_options, where=f"study {config.name!r} model_options", allow_pickle=allow_pickle
    )
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from modelscale.pipeline.folders import run_lock

    busy = (
        f"another `modelscale scale` is running the study {config.name!r} into {{path}}; wait for it to finish, "
        "or share the points between processes with --storage URL and --worker"
    )
    with run_lock(out, name=".scale.lock", busy=busy):
        points, notes = sweep_points(config, gpu_sizes=gpu_sizes)
        say = Printer(progress)
        db = open_store(store)
        own = db is not store
        try:
            location = db.location
            if "://" not in location:
                location = str(Path(location).resolve())
            stored = _stored_points(db, config, out)
        finally:
            if own:
                db.close()
        records: dict[str, dict[str, Any]] = {}
        todo: list[SweepPoint] = []
        for point in points:
            prior = stored.get(point.key)
            model_ok = not config.save_models or (
                prior and Path(str(prior["record"].get("model_path"))).exists()
            )
            if prior and prior["settings"] == point_settings(config, point) and model_ok:
                records[point.key] = prior["record"]
            else:
                todo.append(point)
        total, done = len(points), len(records)
        for i, point in enumerate(p for p in points if p.key in records):
            say(_line(i + 1, total, config, records[point.key], "done earlier (resumed)"), "dim")
        failed: list[dict[str, Any]] = []
        config_data = config.to_dict()
        if jobs > 1:
            config_data["train"]["progress"] = False  # one line per point instead of interleaved bars
        from modelscale.scaling.point import execute_point

        args = [(config_data, dataclasses.asdict(p), location, str(out), allow_pickle) for p in todo]

        def collect(point: SweepPoint, outcome: tuple[Any, Any]) -> None:
            nonlocal done
            done += 1
            rec, error = outcome
            if rec is None:
                failed.append({"key": point.key, "error": error})
                say(f"[{done}/{total}] {config.name} {point.key}: FAILED: {error}", "bold red")
            else:
                records[point.key] = rec
                say(_line(done, total, config, rec, "trained"))

        if jobs == 1 or len(todo) <= 1:
            for point, a in zip(todo, args):
                collect(point, execute_point(*a))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
            with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
                futures = {pool.submit(execute_point, *a): p for p, a in zip(todo, args)}
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except Exception as exc:  # noqa: BLE001 - a crashed worker process
                        outcome = (None, f"worker crashed: {type(exc).__name__}: {exc}")
                    collect(futures[future], outcome)
        ordered = [records[p.key] for p in points if p.key in records]
        if any(r["task"] == "lm" for r in ordered):
            notes.append("D for language models is tokens (bytes); flops_6nd uses non-embedding parameters")
        notes.append(
            "train_flops: FlopCounterMode FLOPs of one forward+backward of one training batch, per example, × examples "
            "seen (matmul/conv/attention only; validation passes not included)"
        )
        return SweepResult(
            config=config,
            points=ordered,
            executed=len(todo) - len(failed),
            skipped=len(points) - len(todo),
            failed=failed,
            out_dir=str(out),
            store=location,
            notes=notes,
            seconds=time.perf_counter() - t0,
        )
