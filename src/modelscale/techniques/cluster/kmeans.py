"""Weight sharing by k-means clustering: each weight becomes one of 2^bits shared, trainable values.

Han et al., "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization
and Huffman Coding" (2016). Per layer (or per output channel) the weight values are clustered by 1-D
k-means (linear initialisation over [min, max] as in the paper, or k-means++), then
    W = codebook[indices],   ∂L/∂codebook[k] = Σ_{i : indices_i = k} ∂L/∂W_i,
so fine-tuning moves each shared value by the summed gradient of its members (autograd of the gather
gives exactly that). The layer is kept as a parametrization: `.weight` still works (also where a
parent reads it directly, as MultiheadAttention does), the dense weight is not stored, and the state
holds a trainable `codebook` plus a uint8 `indices` buffer. With a pruning mask, only the kept weights
are clustered and pruned ones point at a fixed centroid that is exactly 0 (the mask stays attached).
Stored packed, a layer takes codebook + ⌈n·bits/8⌉ bytes (see `storage.py`).

Example::

    from modelscale import apply
    from modelscale.techniques.cluster.kmeans import WeightClusterConfig
    result = apply(model, WeightClusterConfig(bits=4))
    print(result.record.summary["packed_bytes"], result.record.summary["dense_bytes"])
    fit(result.model, data, TrainConfig(epochs=2))   # codebooks train, indices stay fixed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.core.apply import ApplyContext, ChangeRecord
from modelscale.core.config import TechniqueConfig, check_range, param
from modelscale.core.registry import register
from modelscale.core.select import select_modules
from modelscale.techniques.cluster.storage import codebook_bytes
from modelscale.techniques.prune.masks import WeightMask, attach_mask, get_mask


@dataclass(kw_only=True)
class WeightClusterConfig(TechniqueConfig):
    """Share weights: k-means codebooks of 2^bits values per layer or per output channel."""

    type: ClassVar[str] = "weight_cluster"
    version: ClassVar[int] = 1

    bits: int = param(4, "bits per weight index: 2^bits shared values per layer (or channel), 1..8")
    per_channel: bool = param(False, "one codebook per output channel instead of one per layer")
    init: Literal["linear", "kmeans++"] = param(
        "linear", "centroid initialisation: evenly over [min, max] (Han et al.) or k-means++ sampling"
    )
    iterations: int = param(50, "most Lloyd iterations per layer (stops early when assignments settle)")
    seed: int = param(0, "seed for k-means++ sampling (results are deterministic on CPU)")

    def validate(self) -> None:
        check_range("bits", self.bits, 1, 8)
        check_range("iterations", self.iterations, 1)


def kmeans_1d(
    values: torch.Tensor,
    k: int,
    *,
    valid: torch.Tensor | None = None,
    init: str = "linear",
    iterations: int = 50,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched 1-D k-means: each row of `values` (rows × n) gets its own k sorted centroids.

    `valid` (bool, like `values`) marks the entries that take part; others get an arbitrary assignment.
    Returns (centroids rows × k, assignment rows × n as int64 indices into the row's centroids).
    """
    x = values.detach().float()
    rows, n = x.shape
    ok = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    okf = ok.float()
    if init == "linear":
        lo = torch.where(ok, x, torch.full_like(x, float("inf"))).amin(1, keepdim=True)
        hi = torch.where(ok, x, torch.full_like(x, float("-inf"))).amax(1, keepdim=True)
        empty = ~ok.any(1, keepdim=True)
        lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
        steps = (
            torch.linspace(0.0, 1.0, k, device=x.device) if k > 1 else torch.full((1,), 0.5, device=x.device)
        )
        centroids = lo + (hi - lo) * steps
    elif init == "kmeans++":
        centroids = _kmeans_pp(x, okf, k, generator)
    else:
        raise ValueError(f"init must be 'linear' or 'kmeans++', got {init!r}")
    # Lloyd steps on the sorted values: a cluster is a run of them between two midpoints, so its sum
    # and count are differences of prefix sums (no atomics: the same result on CPU and GPU).
    order = torch.sort(x, dim=1, stable=True)
    xs = order.values.contiguous()
    oks = okf.gather(1, order.indices).double()
    zero = torch.zeros(rows, 1, dtype=torch.float64, device=x.device)
    sum_prefix = torch.cat([zero, torch.cumsum(xs.double() * oks, 1)], 1)
    count_prefix = torch.cat([zero, torch.cumsum(oks, 1)], 1)
    first = torch.zeros(rows, 1, dtype=torch.long, device=x.device)
    last = torch.full((rows, 1), n, dtype=torch.long, device=x.device)
    for _ in range(iterations):
        centroids = centroids.sort(1).values
        mids = ((centroids[:, 1:] + centroids[:, :-1]) / 2).contiguous()
        ends = torch.cat([first, torch.searchsorted(xs, mids, right=True), last], 1)
        sums = sum_prefix.gather(1, ends[:, 1:]) - sum_prefix.gather(1, ends[:, :-1])
        counts = count_prefix.gather(1, ends[:, 1:]) - count_prefix.gather(1, ends[:, :-1])
        updated = torch.where(counts > 0, sums / counts.clamp_min(1.0), centroids.double()).float()
        settled = torch.equal(updated, centroids)
        centroids = updated
        if settled:
            break
    centroids = centroids.sort(1).values
    return centroids, _nearest(x, centroids)


def _nearest(x: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every entry (centroids sorted within each row)."""
    if sorted_centroids.shape[1] == 1:
        return torch.zeros_like(x, dtype=torch.long)
    mids = (sorted_centroids[:, 1:] + sorted_centroids[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), x.contiguous())


def _kmeans_pp(x: torch.Tensor, okf: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding, batched over rows: each next centroid drawn with probability ∝ D²."""
    rows = x.shape[0]
    weights = torch.where(okf.sum(1, keepdim=True) > 0, okf, torch.ones_like(okf))
    chosen = [_draw(x, weights, generator)]
    d2 = (x - chosen[0]).pow(2)
    for _ in range(1, k):
        w = d2 * weights
        w = torch.where(w.sum(1, keepdim=True) > 0, w, weights)  # all points covered: draw uniformly
        chosen.append(_draw(x, w, generator))
        d2 = torch.minimum(d2, (x - chosen[-1]).pow(2))
    return torch.cat(chosen, 1).reshape(rows, k)


def _draw(x: torch.Tensor, weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One value per row of `x`, drawn with probability ∝ `weights` (inverse-CDF; no category limit)."""
    cdf = torch.cumsum(weights.double(), 1)
    u = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=torch.float64) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u).clamp_max(x.shape[1] - 1)
    return x.gather(1, index)


class ClusteredWeight(nn.Module):
    """Parametrization W = table[indices]: a trainable codebook per row group and fixed uint8 indices.

    `codebook` is (groups × entries) with groups = out channels (per channel) or 1. With
    `zero_centroid`, index 0 means the constant 0 and index j > 0 means codebook[:, j - 1].
    """

    def __init__(
        self, codebook: torch.Tensor, indices: torch.Tensor, *, bits: int, zero_centroid: bool
    ) -> None:
        super().__init__()
        self.bits, self.zero_centroid = int(bits), bool(zero_centroid)
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("indices", indices.detach().to(torch.uint8).clone())

    def table(self) -> torch.Tensor:
        """The full lookup table (groups × 2^bits at most), the fixed zero first when present."""
        if not self.zero_centroid:
            return self.codebook
        return torch.cat([self.codebook.new_zeros(self.codebook.shape[0], 1), self.codebook], 1)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        table = self.table()
        flat = self.indices.reshape(table.shape[0], -1).long()
        return table.gather(1, flat).reshape(self.indices.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        # The dense weight is not kept: the codebook and indices are the whole state.
        return weight.new_empty(0)

    def packed_bits(self) -> dict[str, int]:
        """Saved folders store the indices bit-packed at `bits` bits each (see `core/weights_file.py`)."""
        return {"indices": self.bits}

    def extra_repr(self) -> str:
        groups, entries = self.codebook.shape
        return f"bits={self.bits}, groups={groups}, entries={entries}, zero_centroid={self.zero_centroid}"


def get_clusters(module: nn.Module, name: str = "weight") -> ClusteredWeight | None:
    """The `ClusteredWeight` parametrizing `module.<name>`, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, ClusteredWeight):
            return p
    return None


def attach_clusters(module: nn.Module, clustered: ClusteredWeight, name: str = "weight") -> None:
    """Make `module.<name>` read from `clustered`, keeping an existing pruning mask after it."""
    mask = get_mask(module, name)
    if parametrize.is_parametrized(module, name):
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    parametrize.register_parametrization(module, name, clustered, unsafe=True)
    module.parametrizations[name].original.requires_grad_(False)  # empty placeholder, never used
    if mask is not None:
        attach_mask(module, mask, name)


def bake_clusters(model: nn.Module, name: str = "weight") -> nn.Module:
    """Replace clustered weights by plain dense Parameters holding the same values (in place)."""
    for module in model.modules():
        if get_clusters(module, name) is None:
            continue
        with torch.no_grad():
            dense = getattr(module, name).detach().clone()
        mask = get_mask(module, name)
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        delattr(module, name)
        module.register_parameter(name, nn.Parameter(dense))
        if mask is not None:
            attach_mask(module, mask, name)
    return model


def _skip_reason(module: nn.Module) -> str | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1 or not weight.is_floating_point():
        return "no floating-point weight"
    if get_clusters(module) is not None:
        return "already clustered"
    if not parametrize.is_parametrized(module, "weight") and not isinstance(
        module._parameters.get("weight"), nn.Parameter
    ):
        return "weight is not a registered parameter"
    if parametrize.is_parametrized(module, "weight"):
        others = [
            type(p).__name__ for p in module.parametrizations["weight"] if not isinstance(p, WeightMask)
        ]
        if others:
            return f"weight has another parametrization ({', '.join(others)}); remove or bake it first"
    return None


def cluster_module(
    module: nn.Module, *, bits: int, per_channel: bool, init: str, iterations: int, generator: torch.Generator
) -> ClusteredWeight:
    """Cluster `module.weight` in place and return the attached parametrization."""
    weight = module.weight.detach()
    mask = get_mask(module)
    zero_centroid = mask is not None and not bool(mask.all())
    groups = weight.shape[0] if per_channel else 1
    values = weight.reshape(groups, -1)
    valid = mask.reshape(groups, -1) if zero_centroid else None
    entries = 2**bits - (1 if zero_centroid else 0)
    centroids, assign = kmeans_1d(
        values, entries, valid=valid, init=init, iterations=iterations, generator=generator
    )
    if zero_centroid:
        assign = torch.where(valid, assign + 1, torch.zeros_like(assign))
    clustered = ClusteredWeight(
        centroids.to(weight.dtype), assign.reshape(weight.shape), bits=bits, zero_centroid=zero_centroid
    )
    attach_clusters(module, clustered)
    return clustered


@register(
    WeightClusterConfig,
    restore=lambda model, config, record: restore_clusters(model, record),
    strength="bits",
)
def weight_cluster(model: nn.Module, config: WeightClusterConfig, ctx: ApplyContext) -> ChangeRecord:
    """Deep Compression weight sharing: k-means codebooks with trainable shared values."""
    layers, skipped, state = [], [], []
    for name, module in select_modules(model, config.target):
        reason = _skip_reason(module)
        if reason is not None:
            skipped.append({"name": name, "reason": reason})
            continue
        bits, per_channel = config.for_layer(name, "bits"), config.for_layer(name, "per_channel")
        generator = torch.Generator(device=module.weight.device).manual_seed(config.for_layer(name, "seed"))
        before = module.weight.detach().clone()
        with torch.no_grad():
            clustered = cluster_module(
                module,
                bits=bits,
                per_channel=per_channel,
                init=config.for_layer(name, "init"),
                iterations=config.for_layer(name, "iterations"),
                generator=generator,
            )
            after = module.weight.detach()
            err = float(
                (after - before).float().pow(2).mean() / before.float().pow(2).mean().clamp_min(1e-30)
            )
        sizes = codebook_bytes(module)
        layers.append(
            {
                "name": name,
                "shape": list(before.shape),
                "bits": bits,
                "per_channel": per_channel,
                "zero_centroid": clustered.zero_centroid,
                "unique_values": int(after.unique().numel()),
                "relative_mse": err,
                **{k: sizes[k] for k in ("dense_bytes", "codebook_bytes", "index_bytes", "packed_bytes")},
            }
        )
        state.append(
            {
                "name": name,
                "bits": bits,
                "groups": clustered.codebook.shape[0],
                "entries": clustered.codebook.shape[1],
                "zero_centroid": clustered.zero_centroid,
            }
        )
    dense = sum(r["dense_bytes"] for r in layers)
    packed = sum(r["packed_bytes"] for r in layers)
    notes = [f"skipped {row['name']}: {row['reason']}" for row in skipped]
    notes.append(
        "packed_bytes is the size of codebooks plus bit-packed indices (storage.export_packed); the "
        "in-memory model holds uint8 indices and computes the dense weight on the fly, so it is not faster"
    )
    summary = {
        "clustered": len(layers),
        "skipped": len(skipped),
        "skipped_layers": skipped,
        "dense_bytes": dense,
        "packed_bytes": packed,
        "compression": dense / packed if packed else 1.0,
        "mean_relative_mse": sum(r["relative_mse"] for r in layers) / len(layers) if layers else 0.0,
    }
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=layers,
        summary=summary,
        notes=notes,
        state={"layers": state},
    )


def restore_clusters(model: nn.Module, record: ChangeRecord) -> None:
    """Attach empty clusters of the recorded sizes so the saved codebooks and indices load into them."""
    for entry in record.state.get("layers", []):
        module = model.get_submodule(entry["name"])
        weight = module.weight
        codebook = weight.new_zeros(int(entry["groups"]), int(entry["entries"]))
        indices = torch.zeros(weight.shape, dtype=torch.uint8, device=weight.device)
        clustered = ClusteredWeight(
            codebook, indices, bits=int(entry["bits"]), zero_centroid=bool(entry["zero_centroid"])
        )
        attach_clusters(module, clustered)
