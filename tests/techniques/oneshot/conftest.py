"""Shared pieces of the one-shot tests: a small zoo gpt and real calibration text (stdlib source bytes)."""

from __future__ import annotations

import pytest
import torch

from modelscale.data.text import stdlib_files


@pytest.fixture(scope="session")
def stdlib_bytes() -> torch.Tensor:
    """About 200 kB of real Python source as a uint8 tensor (the first stdlib files in sorted order)."""
    data = b""
    for path in stdlib_files():
        data += path.read_bytes() + b"\n"
        if len(data) > 200_000:
            break
    return torch.frombuffer(bytearray(data[:200_000]), dtype=torch.uint8).clone()


def windows(data: torch.Tensor, count: int, length: int, seed: int) -> torch.Tensor:
    """`count` seeded windows of `length` bytes as (count, length) int64 token ids."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - length, (count,), generator=g)
    return torch.stack([data[s : s + length] for s in starts.tolist()]).to(torch.int64)


def tiny_gpt(n_layer: int = 2, n_embd: int = 64, block_size: int = 32):
    from modelscale.models import build_model

    torch.manual_seed(0)
    return build_model("gpt", block_size=block_size, n_layer=n_layer, n_head=4, n_embd=n_embd).eval()


def output_error(reference: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((reference(x) - model(x)).pow(2).mean())
