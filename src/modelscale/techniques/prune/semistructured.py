"""2:4 semi-structured sparsity: in every 4 consecutive input weights of a Linear, keep the 2 largest.

Mishra et al., "Accelerating Sparse Deep Neural Networks" (2021): NVIDIA GPUs from Ampere on run a
matmul whose weight has at most 2 non-zeros in each group of 4 along the reduction (input) dimension
faster (measured: 1.50x for an 8192×8192 fp16 Linear at batch 8192 on an H200 with cuSPARSELt,
torch 2.11; torch's CUTLASS 2:4 kernels run only on compute capability 8.x, so Hopper uses cuSPARSELt). For a Linear weight W (out × in, in % 4 == 0),
group g of row r is ``W[r, 4g:4g+4]`` and the mask keeps ``argtop2 |W[r, 4g:4g+4]|``, so exactly 50%
of the targeted weights become zero. The mask is kept by parametrization (see `masks.py`), so
fine-tuning keeps the pattern. On CPU there is no sparse kernel: the masked model is exactly as large
and as fast as the dense one (the record says so). With `to_sparse_kernel=True` on CUDA the masked
weights are converted to `torch.sparse` semi-structured tensors (inference only, not saveable).

Example::

    from modelscale import apply
    from modelscale.techniques.prune.semistructured import SemiStructured24Config
    result = apply(model, SemiStructured24Config())
    print(result.record.summary["sparsity"])   # 0.5 of the targeted Linear weights are zero
    print(result.record.notes)                  # which layers were skipped, and why
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
from modelscale.core.select import Target, select_modules
from modelscale.techniques.prune.magnitude import restore_masks
from modelscale.techniques.prune.masks import attach_mask


@dataclass(kw_only=True)
class SemiStructured24Config(TechniqueConfig):
    """Keep the 2 largest of every 4 consecutive input weights of Linear layers (2:4 sparsity)."""

    type: ClassVar[str] = "semistructured_24"
    version: ClassVar[int] = 1

    target: Target = param(
        factory=lambda: Target(types=("Linear",)), help="layers to sparsify; only Linear layers are supported"
    )
    min_features: int = param(
        8, "skip Linear layers with fewer input features than this (too small to matter)"
    )
    to_sparse_kernel: bool = param(
        False,
        "on CUDA, convert masked weights to torch's 2:4 sparse tensors for the fast kernels (inference only)",
    )
    backend: Literal["cusparselt", "cutlass"] = param(
        "cusparselt", "sparse kernel library used by to_sparse_kernel (cutlass when cuSPARSELt is missing)"
    )

    def validate(self) -> None:
        check_range("min_features", self.min_features, 4)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping the 2 largest-magnitude entries of each 4 consecutive ones along dim 1."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // 4, 4)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def _to_sparse_kernel(layers: list[tuple[str, nn.Module]], backend: str) -> tuple[list[str], list[str], str]:
    """Bake each layer's mask and store its weight as a semi-structured sparse tensor.

    Returns (converted layer names, notes, backend used)."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    notes = []
    major = torch.cuda.get_device_capability(layers[0][1].weight.device)[0]
    if backend == "cutlass" and major != 8 and torch.backends.cusparselt.is_available():
        notes.append(
            f"CUTLASS 2:4 kernels run only on compute capability 8.x (this GPU: {major}.x): used cuSPARSELt"
        )
        backend = "cusparselt"
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        notes.append("cuSPARSELt is not available in this torch build: used the CUTLASS kernels")
        backend = "cutlass"
    # Calling the backend's class directly leaves torch's global _FORCE_CUTLASS switch untouched.
    kind = SparseSemiStructuredTensorCUTLASS if backend == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
    converted = []
    for name, module in layers:
        dense = module.weight.detach().contiguous()
        try:
            sparse = kind.from_dense(dense)
            probe = torch.zeros(64, dense.shape[1], dtype=dense.dtype, device=dense.device)
            torch.nn.functional.linear(probe, sparse)  # some kernels only fail when run
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"{name}: kept masked dense weights ({first[:160]})")
            continue
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return converted, notes, backend


@register(
    SemiStructured24Config,
    restore=lambda model, config, record: restore_masks(model, record),
    applies_to="linear",
)
def semistructured_24(model: nn.Module, config: SemiStructured24Config, ctx: ApplyContext) -> ChangeRecord:
    """2:4 semi-structured sparsity for Linear layers, kept by weight masks."""
    chosen, skipped = [], []
    for name, module in select_modules(model, config.target):
        if not isinstance(module, nn.Linear):
            skipped.append(f"{name} ({type(module).__name__}: only Linear layers)")
        elif module.in_features % 4 or module.in_features < config.min_features:
            skipped.append(
                f"{name} (in_features={module.in_features}: needs a multiple of 4, >= {config.min_features})"
            )
        else:
            chosen.append((name, module))
    with torch.no_grad():
        for _, module in chosen:
            attach_mask(module, two_four_mask(module.weight))  # the effective weight: earlier masks count
    rows = []
    for name, module in chosen:
        w = module.weight
        rows.append(
            {
                "name": name,
                "shape": list(w.shape),
                "sparsity": float((w == 0).sum()) / w.numel(),
                "numel": w.numel(),
            }
        )
    notes = []
    if skipped:
        notes.append(f"skipped {len(skipped)} layer(s): " + "; ".join(skipped))
    kernel = "masked dense"
    converted: list[str] = []
    if config.to_sparse_kernel:
        on_cuda = [(n, m) for n, m in chosen if m.weight.is_cuda]
        if len(on_cuda) < len(chosen):
            notes.append("no CPU kernel for 2:4 sparsity: layers on CPU keep masked dense weights")
        if on_cuda:
            converted, kernel_notes, used = _to_sparse_kernel(on_cuda, config.backend)
            notes.extend(kernel_notes)
            kernel = used if converted else kernel
            if converted:
                notes.append(
                    f"{len(converted)} layer(s) hold sparse kernel weights: inference only, and not saveable "
                    "(save the masked model before converting)"
                )
    if not converted:
        notes.append(
            "masked dense weights: the same size and speed as the dense model until run with 2:4 sparse "
            "kernels (CUDA, to_sparse_kernel=True)"
        )
    zeros = sum(r["sparsity"] * r["numel"] for r in rows)
    total = sum(r["numel"] for r in rows)
    return ChangeRecord(
        technique=config.type,
        config=config.to_dict(),
        layers=rows,
        summary={
            "sparsity": zeros / max(total, 1),
            "zeroed": int(round(zeros)),
            "targeted_params": total,
            "layers": len(rows),
            "skipped": len(skipped),
            "kernel": kernel,
        },
        notes=notes,
        state={"masked": [name for name, _ in chosen if name not in converted]},
    )
