"""Parameter counts: total, trainable, non-zero (on effective weights) and non-embedding.

A module with a torch parametrization (for example a pruning mask from `techniques/prune/masks.py`)
stores `parametrizations.weight.original` but computes with `module.weight = original * mask`; every
count here is taken on that effective weight, so a half-masked layer counts half its weights as
non-zero. Quantized layers keep their weights as integer (or fp8) buffers and expose the dequantized
`module.weight`: those weights are counted too, as frozen parameters. Tied (shared) parameters are
counted once.

Non-embedding parameters follow Kaplan et al. (2020): everything except token embeddings
(`nn.Embedding`) and position embeddings (parameters named like `pos_embed`, `position_embedding`,
`wpe`). An untied output head is counted as non-embedding.

Example::

    from modelscale.measure.params import count_params
    report = count_params(model)
    print(report.total, report.nonzero, report.sparsity)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from modelscale.measure._report import Report

_POSITION_NAME = re.compile(r"(^|[._])(wpe|pos(ition(al)?)?_?emb(ed(ding)?s?)?)($|[._])", re.IGNORECASE)


@dataclass
class ParamReport(Report):
    """Parameter counts of one model (effective weights; shared tensors counted once)."""

    total: int
    trainable: int
    nonzero: int
    non_embedding: int
    embedding: int
    param_bytes: int  # bytes the effective parameters occupy in memory at their dtypes

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are exactly zero."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, torch.Tensor, bool]]:
    """(qualified name, owner module, effective tensor, trainable) for every parameter, each once.

    Parametrized tensors are evaluated (`module.weight`, not `...parametrizations.weight.original`);
    `trainable` is taken from the underlying original parameters.
    """
    seen: set[int] = set()
    with torch.no_grad():
        for prefix, module in model.named_modules(remove_duplicate=False):
            if isinstance(module, parametrize.ParametrizationList) or ".parametrizations." in f".{prefix}.":
                continue  # internals of a parametrization: reached through their owner below
            dotted = f"{prefix}." if prefix else ""
            if parametrize.is_parametrized(module):
                for name, plist in module.parametrizations.items():
                    originals = [p for p in plist.parameters(recurse=False)]
                    key = id(originals[0]) if originals else id(plist)
                    if key in seen:
                        continue
                    seen.add(key)
                    value = getattr(module, name)
                    if isinstance(value, torch.Tensor):
                        trainable = any(p.requires_grad for p in originals)
                        yield f"{dotted}{name}", module, value.detach(), trainable
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield f"{dotted}{name}", module, p.detach(), p.requires_grad
            stored = _quantized_weight(module)
            if stored is not None:
                yield f"{dotted}weight", module, stored, False


_CODE_DTYPES = {
    torch.int8,
    torch.uint8,
    torch.int32,
    torch.float16,
    torch.bfloat16,
    getattr(torch, "float8_e4m3fn", torch.int8),
}


def _quantized_weight(module: nn.Module) -> torch.Tensor | None:
    """The dequantized weight of a quantized layer (its codes are integer buffers, not parameters).

    Such layers keep their weights as int8 / packed int4 / fp8 / bf16 buffers and expose `module.weight` as the
    dequantized value; the weights are still the model's parameters, so they are counted (frozen).
    """
    if "weight" in module._parameters or parametrize.is_parametrized(module, "weight"):
        return None
    if not any(b is not None and b.dtype in _CODE_DTYPES for b in module._buffers.values()):
        return None
    weight = getattr(module, "weight", None)
    return weight.detach() if isinstance(weight, torch.Tensor) and weight.is_floating_point() else None


def _is_embedding(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding | nn.EmbeddingBag) or bool(_POSITION_NAME.search(name))


def count_params(model: nn.Module) -> ParamReport:
    """Count parameters of `model` on their effective values (see the module docstring)."""
    total = trainable = nonzero = embedding = nbytes = 0
    for name, module, tensor, is_trainable in effective_parameters(model):
        n = tensor.numel()
        total += n
        nbytes += n * tensor.element_size()
        if is_trainable:
            trainable += n
        nonzero += int(torch.count_nonzero(tensor))
        if _is_embedding(name, module):
            embedding += n
    return ParamReport(
        total=total,
        trainable=trainable,
        nonzero=nonzero,
        non_embedding=total - embedding,
        embedding=embedding,
        param_bytes=nbytes,
    )
