"""The optimal-brain-surgeon core shared by GPTQ and SparseGPT: one layer, its Hessian, column by column.

Frantar & Alistarh, "Optimal Brain Compression" (2022), "GPTQ" (2023) and "SparseGPT" (2023). For a
layer y = W x with calibration inputs X (in × n), the layer-wise loss ‖W X − Ŵ X‖² has Hessian

    H = 2 X Xᵀ / n   (+ λ · mean(diag H) · I, the damping that makes it invertible).

Columns are visited in order (or by decreasing diag H: "act-order"). When column i is rounded (to the
quantization grid) or zeroed (pruned), the rest of the row absorbs the error through the upper Cholesky
factor U of H⁻¹ (U = chol(H⁻¹)ᵀ, so row i of U holds what is left of H⁻¹ after the earlier columns):

    e = (w_i − q_i) / U_ii,     W[:, i:] −= e · U[i, i:]

"Lazy batch updates" apply this inside a block of B columns only and update the columns after the
block once, W[:, i2:] −= E · U[i1:i2, i2:], which turns the work into matrix products. SparseGPT chooses
the pruned weights inside each block by w² / U_ii² (unstructured: the smallest fraction of the block;
N:M: the M − N smallest of every M consecutive columns of each row, decided when the scan reaches them).

A Hessian that is not positive definite (rank-deficient calibration data) is retried with damping ×10,
up to `retries` times; if every try fails the layer falls back to round-to-nearest / magnitude and the
caller records it.

Example::

    h = HessianStats(in_features)
    h.add(x)                                           # every calibration input of the layer
    out = obs_compress(w, h.hessian(), quant=QuantSpec(bits=4, group_size=128), act_order=True)
    out.weight, out.codes, out.scale, out.zero, out.damp, out.retries
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from modelscale.techniques.quantize.common import (
    SCALE_DTYPES,
    dequantize_groups,
    group_layout,
    quantize_groups,
)


# --- calibration statistics ---------------------------------------------------------------------------
class HessianStats:
    """Running X Xᵀ, Σ x² and Σ |x| of a layer's inputs (rows of x are samples; the last dim is `in`)."""

    def __init__(self, in_features: int, *, hessian: bool = True, device: torch.device | None = None) -> None:
        self.in_features = in_features
        self.rows = 0
        self.xtx = torch.zeros(in_features, in_features, device=device) if hessian else None
        self.sq = torch.zeros(in_features, device=device)  # Σ x_j² (Wanda's ‖X_j‖²)
        self.abs = torch.zeros(in_features, device=device)  # Σ |x_j| (AWQ's activation magnitude)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.in_features).to(torch.float32)
        self.rows += x.shape[0]
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)
        self.sq.add_(x.pow(2).sum(0))
        self.abs.add_(x.abs().sum(0))

    def hessian(self) -> torch.Tensor:
        """H = 2 X Xᵀ / n (float32)."""
        if self.xtx is None:
            raise ValueError("these statistics were collected without the Hessian")
        return self.xtx * (2.0 / max(self.rows, 1))

    def bytes(self) -> int:
        tensors = [t for t in (self.xtx, self.sq, self.abs) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


# --- the quantization grid ------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantSpec:
    """Group-wise integer grid: `bits`, `group_size` (0 = per output channel), symmetric or not."""

    bits: int
    group_size: int = 128
    symmetric: bool = False
    scale_dtype: str = "float32"

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale, zero) per row of `w` (rows × k), computed exactly as the weight-only storage does."""
        _, scale, zero = quantize_groups(
            w,
            bits=self.bits,
            group_size=0,
            symmetric=self.symmetric,
            scale_dtype=SCALE_DTYPES[self.scale_dtype],
        )
        return scale[:, 0], None if zero is None else zero[:, 0]

    def round(
        self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, dequantized values) of `w` on a given grid; same formulas as `quantize_groups`."""
        s = scale.to(torch.float32)
        if self.symmetric:
            qmax = 2 ** (self.bits - 1) - 1
            q = torch.clamp(torch.round(w.to(torch.float32) / s), -qmax, qmax)
            return q, (q * s).to(w.dtype)
        z = zero.to(torch.float32)
        q = torch.clamp(torch.round(w.to(torch.float32) / s) + z, 0, 2**self.bits - 1)
        return q, ((q - z) * s).to(w.dtype)


# --- Hessian inverse with damping retries --------------------------------------------------------------
def upper_factor_of_inverse(h: torch.Tensor) -> torch.Tensor | None:
    """U, upper triangular with UᵀU = H⁻¹ (None if H is not positive definite), from one Cholesky.

    With J the order-reversing permutation, J H J = L Lᵀ gives H = (J L J)(J L J)ᵀ with J L J upper, so
    H⁻¹ = UᵀU for U = (J L J)⁻¹ = J L⁻¹ J: one Cholesky and one triangular inverse, n³/3 flops each,
    instead of Cholesky, inverse from it and a second Cholesky (4n³/3; minutes on a 25088-wide layer).
    """
    flipped = h.flip((0, 1))
    lower, info = torch.linalg.cholesky_ex(flipped)
    del flipped
    if int(info) != 0:
        return None
    return triangular_inverse(lower).flip((0, 1))


def triangular_inverse(lower: torch.Tensor) -> torch.Tensor:
    """L⁻¹ of a lower-triangular L: LAPACK's trtri in place on the CPU (n³/3 flops), a solve elsewhere."""
    if lower.device.type == "cpu" and lower.dtype in (torch.float32, torch.float64):
        from scipy.linalg import lapack
        from threadpoolctl import threadpool_limits

        trtri = lapack.strtri if lower.dtype == torch.float32 else lapack.dtrtri
        upper_f = lower.numpy().T  # the same memory seen column-major: Lᵀ, upper triangular
        with threadpool_limits(torch.get_num_threads()):
            inverse, info = trtri(upper_f, lower=0, overwrite_c=1)
        if info == 0:
            return torch.from_numpy(inverse.T)  # (Lᵀ)⁻¹ seen row-major: L⁻¹
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    return torch.linalg.solve_triangular(lower, eye, upper=False)


def inverse_cholesky(
    h: torch.Tensor, damp: float, *, retries: int = 3, consume: bool = False
) -> tuple[torch.Tensor | None, float, int]:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹, λ = damp, ×10 on each failed try.

    Returns (U or None if every try failed, the last λ tried, the number of retries used). The damping
    is added to H's diagonal in place and taken back (H is unchanged afterwards) unless `consume`, when
    the caller gives H up; no identity matrix (on the CPU) and at most two n × n temporaries besides H (a
    25088-wide VGG layer: 2.5 GB each in float32).
    """
    diag = torch.diagonal(h)
    original = diag.clone()
    mean_diag = float(original.mean())
    lam = damp
    try:
        for attempt in range(retries + 1):
            if attempt:
                lam *= 10.0
            diag.copy_(original + lam * mean_diag)
            upper = upper_factor_of_inverse(h)
            if upper is not None and bool(torch.isfinite(upper).all()):
                return upper, lam, attempt
        return None, lam, retries
    finally:
        if not consume:
            diag.copy_(original)


@dataclass
class ObsResult:
    """What `obs_compress` made of one layer (all in the original column order)."""

    weight: torch.Tensor  # (out × in) new effective weight (dequantized, pruned)
    codes: torch.Tensor | None = None  # int16 codes when quantizing
    scale: torch.Tensor | None = None  # (out × groups)
    zero: torch.Tensor | None = None  # (out × groups) uint8, asymmetric only
    keep: torch.Tensor | None = None  # bool (out × in) when pruning
    damp: float = 0.0  # the damping λ that worked (or the last tried)
    retries: int = 0  # damping retries needed
    fallback: bool = False  # every damping failed: round-to-nearest / magnitude instead
    loss: float = 0.0  # Σ (w − q)² / U_ii² / 2, the OBS estimate of the added layer loss
    notes: list[str] = field(default_factory=list)


def _finish_codes(spec: QuantSpec, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None):
    return (
        codes.to(torch.int16),
        scale.to(SCALE_DTYPES[spec.scale_dtype]),
        (None if zero is None else zero.to(torch.uint8)),
    )


def _fallback(
    w: torch.Tensor,
    quant: QuantSpec | None,
    sparsity: float,
    n_m: tuple[int, int] | None,
    keep0,
    damp,
    retries,
) -> ObsResult:
    """No usable Hessian: magnitude pruning and round-to-nearest on the original weight."""
    keep = keep0.clone() if keep0 is not None else torch.ones_like(w, dtype=torch.bool)
    if n_m is not None:
        n, m = n_m
        score = w.abs().view(w.shape[0], -1, m)
        drop = score.topk(m - n, dim=-1, largest=False).indices
        keep &= ~torch.zeros_like(score, dtype=torch.bool).scatter_(-1, drop, True).view_as(w)
    elif sparsity > 0:
        k = int(w.shape[1] * sparsity)
        drop = w.abs().topk(k, dim=1, largest=False).indices
        keep &= ~torch.zeros_like(keep).scatter_(1, drop, True)
    pruned = w * keep
    result = ObsResult(weight=pruned, damp=damp, retries=retries, fallback=True)
    if sparsity > 0 or n_m is not None or keep0 is not None:
        result.keep = keep
    if quant is not None:
        codes, scale, zero = quantize_groups(
            pruned, bits=quant.bits, group_size=quant.group_size, symmetric=quant.symmetric,
            scale_dtype=SCALE_DTYPES[quant.scale_dtype],
        )  # fmt: skip
        result.codes, result.scale, result.zero = codes, scale, zero
        result.weight = dequantize_groups(
            codes, scale, zero, group_size=group_layout(w.shape[1], quant.group_size)[0]
        )
    return result


def obs_compress(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    quant: QuantSpec | None = None,
    sparsity: float = 0.0,
    n_m: tuple[int, int] | None = None,
    keep: torch.Tensor | None = None,
    act_order: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    retries: int = 3,
    own: bool = False,
) -> ObsResult:
    """Quantize and/or prune one (out × in) weight `w` given its Hessian `h` (in × in).

    `quant`: the integer grid (None: no quantization). `sparsity` (unstructured, chosen per block) or
    `n_m=(n, m)` (keep n of every m consecutive input weights): pruning (none by default). `keep`: an
    existing mask to respect (masked weights stay zero). `act_order` visits columns by decreasing
    diag(H); its quantization groups keep the stored (contiguous) layout, so their scales are taken
    from the weights before any update ("static groups"). Works in `w`'s dtype (float32 or float64).
    `own`: `h` is the caller's to give up (a fresh Hessian): it is modified instead of copied.
    """
    w = w.clone()
    h = h.to(w.dtype) if own else h.to(w.dtype).clone()
    rows, cols = w.shape
    dtype = w.dtype
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    if keep is not None:
        w = w * keep
    if n_m is not None and act_order:
        raise ValueError("N:M pruning needs the natural column order (act_order=False)")
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else None
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
        keep = keep[:, perm] if keep is not None else None
    upper, lam, used = inverse_cholesky(h, damp, retries=retries, consume=True)  # h: our own copy
    del h
    if upper is None:
        if perm is not None:
            inv = torch.argsort(perm)
            w, keep = w[:, inv], (keep[:, inv] if keep is not None else None)
        return _fallback(w, quant, sparsity, n_m, keep, lam, used)

    group, groups = group_layout(cols, quant.group_size) if quant is not None else (cols, 1)
    static = quant is not None and (act_order or groups == 1)
    if n_m is not None and cols % n_m[1]:
        raise ValueError(f"N:M pruning needs in_features divisible by {n_m[1]}, got {cols}")
    step = group if quant is not None and not static else 1
    if n_m is not None:
        step = step * n_m[1] // math.gcd(step, n_m[1])
    block = max(step, -(-block_size // step) * step)

    scale = torch.zeros(rows, groups, dtype=torch.float32, device=w.device)
    zero = (
        torch.zeros(rows, groups, dtype=torch.float32, device=w.device)
        if quant and not quant.symmetric
        else None
    )
    codes = torch.zeros(rows, cols, dtype=torch.float32, device=w.device) if quant else None
    col_group = None
    if quant is not None:
        original = perm if perm is not None else torch.arange(cols, device=w.device)
        col_group = original // group  # stored group of each (permuted) column
        if static:
            w_orig = w[:, torch.argsort(perm)] if perm is not None else w
            for g in range(groups):
                s, z = quant.params(w_orig[:, g * group : (g + 1) * group])
                scale[:, g] = s.float()
                if zero is not None:
                    zero[:, g] = z.float()
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    if keep is not None:
        pruned |= ~keep
    loss = torch.zeros((), dtype=torch.float64, device=w.device)
    out = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        p1 = pruned[:, i1:i2].clone()
        if sparsity > 0 and n_m is None:
            score = (w1 / d1).pow(2)
            score[p1] = -1.0  # already masked: counted among the pruned
            k = int(score.numel() * sparsity)
            if k:
                idx = torch.topk(score.flatten(), k, largest=False).indices
                p1.view(-1)[idx] = True
        for i in range(i2 - i1):
            col = w1[:, i]
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                score = (w1[:, i : i + m] / d1[i : i + m]).pow(2)
                score[p1[:, i : i + m]] = -1.0
                drop = score.topk(m - n, dim=1, largest=False).indices
                p1[:, i : i + m].scatter_(1, drop, True)
            q = col.masked_fill(p1[:, i], 0.0)
            if quant is not None:
                g = int(col_group[i1 + i])
                if not static and (i1 + i) % group == 0:
                    span = w1[:, i : i + group].masked_fill(p1[:, i : i + group], 0.0)
                    s, z = quant.params(span)
                    scale[:, g] = s.float()
                    if zero is not None:
                        zero[:, g] = z.float()
                c, q = quant.round(q, scale[:, g], None if zero is None else zero[:, g])
                codes[:, i1 + i] = c
            q1[:, i] = q
            e = (col - q) / d1[i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        out[:, i1:i2] = q1
        pruned[:, i1:i2] = p1
        loss += err1.double().pow(2).sum() / 2
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    if perm is not None:
        inv = torch.argsort(perm)
        out, pruned = out[:, inv], pruned[:, inv]
        codes = codes[:, inv] if codes is not None else None
    result = ObsResult(weight=out.to(dtype), damp=lam, retries=used, loss=float(loss))
    if sparsity > 0 or n_m is not None or keep is not None:
        result.keep = ~pruned
    if quant is not None:
        result.codes, result.scale, result.zero = _finish_codes(quant, codes, scale, zero)
    return result
