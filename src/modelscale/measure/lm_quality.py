"""Quality measures for language models and text encoders: perplexity / bits per byte, embedding agreement.

Causal LMs, on held-out (inputs, next-token targets) batches (targets < 0 are ignored)::

    nll = Σ −log p(y_t | x_≤t) / tokens,   perplexity = e^nll,   bits/token = nll / ln 2
    bits per byte = Σ −log₂ p / bytes of text   (= bits/token for byte-level models; pass `text_bytes`
                                                 for tokenizers whose tokens span several bytes)

Encoders (a sentence-embedding model, e.g. MiniLM with mean pooling), on the same real sentences for the
reference (uncompressed) model and the candidate:

    cosine_i = cos(e_i, ê_i)       (mean, min and 5th percentile over sentences; 1 − mean is the loss)
    neighbour agreement = share of sentences whose nearest other sentence (by cosine) is the same under
                          both models; top-k overlap = mean |top-k(e) ∩ top-k(ê)| / k

Pure functions returning small dataclass reports (`to_dict` / `from_dict`).

Example::

    from modelscale.measure.lm_quality import lm_quality, embedding_agreement
    lm_quality(model, test_loader).bits_per_byte
    rep = embedding_agreement(encoder, compressed, sentence_batches)
    rep.mean_cosine, rep.neighbour_agreement
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure._common import frozen_eval, logits_of, model_device
from modelscale.measure._report import Report


@dataclass
class LMQualityReport(Report):
    """Next-token quality of a causal LM on held-out text."""

    sequences: int
    tokens: int  # predictions scored
    nll: float  # mean negative log-likelihood per token, nats
    perplexity: float
    bits_per_token: float
    bits_per_byte: float | None  # None when the token → byte ratio is unknown


@dataclass
class EmbeddingAgreementReport(Report):
    """How closely a candidate encoder's sentence embeddings follow the reference encoder's."""

    sentences: int
    mean_cosine: float
    min_cosine: float
    p05_cosine: float  # 5th percentile
    neighbour_agreement: float  # same nearest neighbour (among the other sentences)
    topk_overlap: float  # mean share of the k nearest neighbours in common
    k: int


def _move(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def lm_quality(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    max_batches: int | None = None,
    byte_level: bool = True,
    text_bytes: int | None = None,
) -> LMQualityReport:
    """Perplexity and bits per byte of `model` on (inputs, targets) batches; outputs (B, T, V) logits."""
    device = model_device(model)
    total = 0.0
    tokens = sequences = 0
    with frozen_eval(model), torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if not isinstance(batch, tuple | list) or len(batch) < 2:
                raise ModelscaleError(
                    "lm_quality needs (inputs, targets) batches, e.g. a DataLoader of a text split"
                )
            x, y = batch[0], batch[1].to(device)
            logits = logits_of(_call(model, _move(x, device))).float()
            if logits.dim() != 3 or logits.shape[:2] != y.shape:
                raise ModelscaleError(
                    f"lm_quality needs logits (B, T, V) matching targets (B, T); got {tuple(logits.shape)} and {tuple(y.shape)}"
                )
            keep = y >= 0
            total += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
            tokens += int(keep.sum())
            sequences += int(y.shape[0])
    if tokens == 0:
        raise ModelscaleError("lm_quality scored no tokens; check the batches are not empty")
    nll = total / tokens
    bits = total / math.log(2)
    if text_bytes is not None:
        per_byte: float | None = bits / text_bytes
    else:
        per_byte = bits / tokens if byte_level else None
    return LMQualityReport(
        sequences=sequences,
        tokens=tokens,
        nll=nll,
        perplexity=math.exp(min(nll, 700.0)),
        bits_per_token=nll / math.log(2),
        bits_per_byte=per_byte,
    )


def embed(model: nn.Module, batches: Iterable[Any]) -> torch.Tensor:
    """Concatenated (N, d) float32 outputs of an encoder on input batches (tensors, dicts or (x, y))."""
    device = model_device(model)
    out = []
    with frozen_eval(model), torch.no_grad():
        for batch in batches:
            inputs = batch[0] if isinstance(batch, tuple | list) else batch
            e = logits_of(_call(model, _move(inputs, device)))
            out.append(e.reshape(e.shape[0], -1).float().cpu())
    if not out:
        raise ModelscaleError("embed got no batches")
    return torch.cat(out)


def compare_embeddings(
    reference: torch.Tensor, candidate: torch.Tensor, *, k: int = 5
) -> EmbeddingAgreementReport:
    """Agreement of two (N, d) embedding matrices of the same N sentences."""
    if reference.shape != candidate.shape or reference.dim() != 2:
        raise ModelscaleError(
            f"embeddings must be two (N, d) tensors of one shape; got {tuple(reference.shape)} and {tuple(candidate.shape)}"
        )
    n = reference.shape[0]
    if n < 3:
        raise ModelscaleError("embedding agreement needs at least 3 sentences")
    ref, cand = reference.double(), candidate.double()
    cos = F.cosine_similarity(ref, cand, dim=1)
    k = min(k, n - 1)

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(e, dim=1)
        sim = unit @ unit.t()
        sim.fill_diagonal_(-math.inf)
        return sim.topk(k, dim=1).indices

    nr, nc = neighbours(ref), neighbours(cand)
    overlap = (nr[:, :, None] == nc[:, None, :]).any(-1).double().sum(1) / k
    return EmbeddingAgreementReport(
        sentences=n,
        mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()),
        p05_cosine=float(torch.quantile(cos, 0.05)),
        neighbour_agreement=float((nr[:, 0] == nc[:, 0]).double().mean()),
        topk_overlap=float(overlap.mean()),
        k=k,
    )


def embedding_agreement(
    reference: nn.Module, candidate: nn.Module, batches: Iterable[Any], *, k: int = 5
) -> EmbeddingAgreementReport:
    """Embed the same batches with both encoders and compare (`compare_embeddings`)."""
    batches = list(batches)
    return compare_embeddings(embed(reference, batches), embed(candidate, batches), k=k)
