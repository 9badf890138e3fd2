"""`gpt`: a small decoder-only, byte-level transformer language model.

Token + learned position embeddings → `n_layer · depth` pre-LayerNorm blocks → final LayerNorm →
lm head. Each block: x + Attn(LN(x)), then x + MLP(LN(x)), where MLP is Linear(d, 4d) → GELU →
Linear(4d, d) and Attn is causal multi-head self-attention,

    softmax(Q Kᵀ / √d_head + causal mask) V,   computed by F.scaled_dot_product_attention(is_causal=True),

with separate `q_proj`, `k_proj`, `v_proj`, `out_proj` Linear layers so structured pruning can remove
whole heads (or channels within every head). `n_head` and `head_dim` are plain attributes of each
`CausalSelfAttention`, read on every forward: a pruner that removes heads sets `n_head`, one that
narrows heads sets `head_dim` (a mismatch fails loudly in `view`, never silently).

`n_embd · width` is rounded to a multiple of `n_head`. Input (B, T) int64 bytes with T ≤ block_size,
output (B, T, vocab_size) logits. `tie_weights=True` shares the lm head with the token embedding
(safetensors stores the shared tensor once).

Example::

    from modelscale.models import build_model
    model = build_model("gpt", block_size=64, n_layer=2, n_head=4, n_embd=128, width=0.5)
    logits = model(torch.randint(0, 256, (2, 64)))          # (2, 64, 256)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.models.registry import ModelArgs, register_model


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v/out projections."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ModelscaleError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.q_proj = nn.Linear(n_embd, n_embd)
        self.k_proj = nn.Linear(n_embd, n_embd)
        self.v_proj = nn.Linear(n_embd, n_embd)
        self.out_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.n_head, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embd, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, 4 * n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    """Decoder-only transformer: (B, T) int64 tokens → (B, T, vocab_size) logits."""

    def __init__(
        self,
        *,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self._init_weights()
        if tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2·n_layer).
        residual_std = 0.02 / math.sqrt(2 * self.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = residual_std if name.endswith(("out_proj", "mlp.proj")) else 0.02
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ModelscaleError(
                f"sequence length {t} exceeds the gpt block_size {self.block_size}; "
                "feed shorter sequences or build with a larger block_size"
            )
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _positive_int(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelscaleError(f"gpt option {label} must be an integer >= 1, got {value!r}")
    return value


@register_model("gpt", summary="byte-level decoder-only transformer LM, (B, T) int64 → (B, T, vocab) logits")
def build_gpt(
    args: ModelArgs,
    *,
    vocab_size: int | None = None,
    block_size: int | None = None,
    n_layer: int = 2,
    n_head: int = 4,
    n_embd: int = 128,
    tie_weights: bool = False,
) -> nn.Module:
    """GPT builder.

    `vocab_size` defaults to num_classes when that is given (not build_model's default 10), else 256
    (bytes); `block_size` defaults to input_shape[0] when input_shape is 1-D (T,), else 128.
    """
    given_classes = args.num_classes != 10  # 10 is build_model's default, i.e. not given
    if vocab_size is None:
        vocab_size = args.num_classes if given_classes else 256
    elif given_classes and args.num_classes != vocab_size:
        raise ModelscaleError(
            f"gpt predicts vocab_size={vocab_size} outputs, but num_classes={args.num_classes}; "
            "give one of them, or the same value to both"
        )
    if block_size is None:
        block_size = args.input_shape[0] if len(args.input_shape) == 1 else 128
    for label, value in (
        ("vocab_size", vocab_size),
        ("block_size", block_size),
        ("n_layer", n_layer),
        ("n_head", n_head),
        ("n_embd", n_embd),
    ):
        _positive_int(label, value)
    return GPT(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=args.repeats(n_layer),
        n_head=n_head,
        n_embd=args.scaled(n_embd, multiple=n_head),
        dropout=args.dropout,
        tie_weights=bool(tie_weights),
    )
