"""Byte-level LMs end to end: pretrain a zoo gpt on Python source, LoRA-adapt it to English, distill it.

Uses the helpers of `benchmarks/lm_adapt.py` at a smaller scale (the benchmark records the real
numbers). Data is real: the standard library's source, and English text shipped with Python.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lm_adapt.py"
BLOCK = 64


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmarks_lm_adapt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_script()


@pytest.fixture(scope="module")
def code(bench):
    from modelscale.data import load_data

    return load_data("pystdlib", block_size=BLOCK, max_bytes=150_000)


@pytest.fixture(scope="module")
def english(bench, tmp_path_factory):
    from modelscale.data import load_data

    path, source = bench.write_english(tmp_path_factory.mktemp("english"))
    return load_data(f"text:{path}", block_size=BLOCK), source


@pytest.fixture(scope="module")
def pretrained(bench, code):
    """Zoo gpt (2 layers, 64 wide) after 150 steps on pystdlib."""
    return bench.pretrain(code, {"n_layer": 2, "n_head": 4, "n_embd": 64}, 150)


def test_english_text_is_real_english(bench):
    data, source = bench.english_text()
    text = data.decode("utf-8", errors="replace").lower()
    assert len(data) > 4000, source
    assert sum(text.count(w) for w in (" the ", " and ", " of ")) > 50  # prose, not code


def test_pretraining_learns_python_source(bench, code, pretrained):
    from modelscale.models import build_model

    torch.manual_seed(0)
    untrained = build_model("gpt", block_size=BLOCK, n_layer=2, n_head=4, n_embd=64)
    trained_bpb = bench.bpb(pretrained, code.test)
    assert trained_bpb < bench.bpb(untrained, code.test) - 2.0
    assert trained_bpb < 5.0  # uniform over bytes is 8


def test_lora_adapts_to_english_with_few_params(bench, english, pretrained):
    data, source = english
    before = bench.bpb(pretrained, data.test)
    adapted, record = bench.lora_adapt(pretrained, data, steps=40, lr=1e-2, seed=0)
    after = bench.bpb(adapted, data.test)
    assert record.summary["trainable_fraction"] < 0.10
    assert after < before - 0.3, (source, before, after)
    # the pretrained model itself is untouched (apply works on a copy)
    assert bench.bpb(pretrained, data.test) == pytest.approx(before, abs=1e-9)


def test_distillation_mechanics_per_token(bench, code, pretrained):
    from modelscale.techniques.distill import DistillConfig, Distiller

    kd = DistillConfig(alpha=0.5, temperature=2.0)
    student, result, initial = bench.train_student(code, pretrained, steps=30, seed=0, kd=kd)
    assert result.steps == 30
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    assert bench.bpb(student, code.test) < initial - 1.0
    # the loss the callback adds is finite and per token: the teacher sees every position
    x, y = code.train[0][0][None], code.train[0][1][None]
    logits = student(x)
    hard = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
    loss = Distiller(pretrained, alpha=0.5, temperature=2.0, task="lm").compute_loss(None, logits, x, y, hard)
    assert logits.shape == (1, BLOCK, 256) and torch.isfinite(loss) and loss.item() != hard.item()
