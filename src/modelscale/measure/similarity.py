"""How alike two models behave: prediction agreement and linear CKA of a layer's activations.

Agreement is the fraction of predictions (examples, or tokens for "lm") on which both models'
argmax is the same. Linear CKA (Kornblith et al., "Similarity of Neural Network Representations
Revisited", 2019) compares activations X (n x p) and Y (n x q) of the same n examples, after
centring each column::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

It is 1 for identical representations and invariant to orthogonal transforms and isotropic scaling
of either one, so it compares layers of different widths (a pruned layer with its dense original).
Activations of a module are captured by name with a forward hook, flattened per example.

Example::

    from modelscale.measure.similarity import prediction_agreement, layer_cka
    print(prediction_agreement(dense, pruned, loader))
    print(layer_cka(dense, pruned, loader, layer="features.3"))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import inputs_for, logits_of, prepared, resolve_device, resolve_dtype
from modelscale.measure.quality import (
    QualityAccumulator,
    QualityReport,
    check_task,
    flatten_predictions,
    iter_batches,
)

CKA_EXAMPLES = 1000


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n examples: (n, ...) each, flattened per example."""
    if x.shape[0] != y.shape[0]:
        raise ModelscaleError(f"CKA needs the same examples in both: got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ModelscaleError("CKA needs at least 2 examples")
    x = x.detach().reshape(x.shape[0], -1).double().cpu()
    y = y.detach().reshape(y.shape[0], -1).double().cpu()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    n = x.shape[0]
    if n < max(x.shape[1], y.shape[1]):  # Gram form: tr(K L) = ||Y^T X||_F^2 with K = X X^T, L = Y Y^T
        k, gram_l = x @ x.T, y @ y.T
        cross, norm_x, norm_y = (k * gram_l).sum(), k.norm(), gram_l.norm()
    else:
        cross, norm_x, norm_y = (y.T @ x).norm() ** 2, (x.T @ x).norm(), (y.T @ y).norm()
    if norm_x == 0 or norm_y == 0:
        return float("nan")  # a constant representation: CKA is undefined
    return float(cross / (norm_x * norm_y))


def find_module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        leaves = [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]
        shown = ", ".join(leaves[:8]) + (", ..." if len(leaves) > 8 else "")
        raise ModelscaleError(
            f"no module named {name!r} in {type(model).__name__}; some valid names: {shown}"
        )
    return modules[name]


@contextlib.contextmanager
def capture(model: nn.Module, layer: str | None, store: list[torch.Tensor], limit: int) -> Iterator[None]:
    """While active, append `layer`'s outputs (flattened per example, on CPU) to `store`, up to `limit` rows.

    With `layer=None` nothing is hooked: the caller stores the model outputs itself.
    """
    if layer is None:
        yield
        return

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        have = sum(t.shape[0] for t in store)
        if have < limit:
            out = logits_of(output)
            store.append(out.detach().reshape(out.shape[0], -1)[: limit - have].float().cpu())

    handle = find_module(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class PairedQuality:
    """One pass of two models over a loader: each one's quality, their agreement and CKA."""

    a: QualityReport
    b: QualityReport
    agreement: float
    cka: float | None
    cka_layer: str  # module name, or "(outputs)" for the models' outputs


def paired_pass(
    a: nn.Module,
    b: nn.Module,
    loader: Iterable[Any],
    *,
    task: str = "classification",
    layer: str | None = None,
    layer_b: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    max_batches: int | None = None,
    cka_examples: int = CKA_EXAMPLES,
) -> PairedQuality:
    """Run `a` and `b` on the same batches: quality of each, agreement, and CKA of `layer` (outputs if None).

    `layer_b` names the matching module of `b` when it differs from `layer` (defaults to `layer`).
    Set `cka_examples=0` to skip CKA.
    """
    check_task(task)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    layer_b = layer if layer_b is None else layer_b
    acc_a, acc_b = QualityAccumulator(task), QualityAccumulator(task)
    acts_a: list[torch.Tensor] = []
    acts_b: list[torch.Tensor] = []
    same = total = 0
    with contextlib.ExitStack() as stack:
        itself = a is b and layer_b == layer  # one model against itself: run it once per batch
        ready_a = stack.enter_context(prepared(a, dev, dt))
        ready_b = ready_a if itself else stack.enter_context(prepared(b, dev, dt))
        stack.enter_context(capture(ready_a, layer, acts_a, cka_examples))
        if not itself:
            stack.enter_context(capture(ready_b, layer_b, acts_b, cka_examples))
        stack.enter_context(torch.no_grad())
        for x, y in iter_batches(loader, max_batches):
            y = y.to(dev)
            out_a = ready_a(*inputs_for(ready_a, x, dev, dt))
            out_b = out_a if itself else ready_b(*inputs_for(ready_b, x, dev, dt))
            acc_a.update(out_a, y)
            acc_b.update(out_b, y)
            pa, _ = flatten_predictions(logits_of(out_a), y, task)
            pb, _ = flatten_predictions(logits_of(out_b), y, task)
            same += int((pa.argmax(-1) == pb.argmax(-1)).sum())
            total += int(pa.shape[0])
            if layer is None:
                for out, store in ((out_a, acts_a), (out_b, acts_b))[: 1 if itself else 2]:
                    have = sum(t.shape[0] for t in store)
                    if have < cka_examples:
                        t = logits_of(out)
                        store.append(t.detach().reshape(t.shape[0], -1)[: cka_examples - have].float().cpu())
    if itself:
        acts_b = acts_a
    cka = None
    if cka_examples > 0 and acts_a and acts_b:
        cka = linear_cka(torch.cat(acts_a), torch.cat(acts_b))
    return PairedQuality(
        a=acc_a.result(),
        b=acc_b.result(),
        agreement=same / total if total else float("nan"),
        cka=cka,
        cka_layer=layer if layer is not None else "(outputs)",
    )


def prediction_agreement(
    a: nn.Module,
    b: nn.Module,
    loader: Iterable[Any],
    *,
    task: str = "classification",
    device: str = "cpu",
    max_batches: int | None = None,
) -> float:
    """Fraction of predictions (examples, or tokens for "lm") where `a` and `b` pick the same class."""
    return paired_pass(
        a, b, loader, task=task, device=device, max_batches=max_batches, cka_examples=0
    ).agreement


def capture_activations(
    model: nn.Module,
    layer: str,
    loader: Iterable[Any],
    *,
    device: str = "cpu",
    max_batches: int | None = None,
    max_examples: int = CKA_EXAMPLES,
) -> torch.Tensor:
    """(n, features) activations of module `layer` over the loader's inputs, flattened per example."""
    dev = resolve_device(device)
    store: list[torch.Tensor] = []
    with prepared(model, dev, None) as ready, capture(ready, layer, store, max_examples), torch.no_grad():
        for x, _ in iter_batches(loader, max_batches):
            if sum(t.shape[0] for t in store) >= max_examples:
                break
            ready(*inputs_for(ready, x, dev, None))
    if not store:
        raise ModelscaleError(
            f"module {layer!r} never ran on the loader's inputs; pick a layer used in forward"
        )
    return torch.cat(store)


def layer_cka(
    a: nn.Module,
    b: nn.Module,
    loader: Iterable[Any],
    *,
    layer: str,
    layer_b: str | None = None,
    device: str = "cpu",
    max_batches: int | None = None,
    max_examples: int = CKA_EXAMPLES,
) -> float:
    """Linear CKA between module `layer` of `a` and `layer_b` (default: same name) of `b`."""
    kwargs = {"device": device, "max_batches": max_batches, "max_examples": max_examples}
    xa = capture_activations(a, layer, loader, **kwargs)
    xb = capture_activations(b, layer_b or layer, loader, **kwargs)
    n = min(xa.shape[0], xb.shape[0])
    return linear_cka(xa[:n], xb[:n])
