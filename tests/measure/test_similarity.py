import copy

import pytest
import torch
from torch import nn

from modelscale.measure import capture_activations, layer_cka, linear_cka, prediction_agreement
from tests.measure.conftest import batches


def _naive_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA through centred Gram matrices, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k = h @ (x.double() @ x.double().T) @ h
    gram_l = h @ (y.double() @ y.double().T) @ h
    return float((k * gram_l).sum() / (k.norm() * gram_l.norm()))


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 20)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    wide = torch.randn(10, 300)  # n < features: Gram form
    assert linear_cka(wide, wide) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x = torch.randn(60, 16, dtype=torch.float64)
    y = torch.randn(60, 12, dtype=torch.float64) + x[:, :12]
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.1 < base < 0.99
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(_naive_cka(x, y), abs=1e-10)


def test_cka_gram_and_feature_forms_agree():
    x, y = torch.randn(30, 40), torch.randn(30, 5)
    assert linear_cka(x, y) == pytest.approx(_naive_cka(x, y), abs=1e-10)  # Gram branch (n < 40)
    x2, y2 = torch.randn(200, 10), torch.randn(200, 6)
    assert linear_cka(x2, y2) == pytest.approx(_naive_cka(x2, y2), abs=1e-10)  # feature branch


def test_agreement_of_a_model_with_itself_and_with_its_copy_is_one(tiny_cnn, digits):
    loader = batches(*[t[:300] for t in digits], 64)
    assert prediction_agreement(tiny_cnn, tiny_cnn, loader) == 1.0
    assert prediction_agreement(tiny_cnn, copy.deepcopy(tiny_cnn), loader) == 1.0


def test_agreement_counts_identical_argmax(tiny_cnn, digits):
    x, y = (t[:200] for t in digits)
    other = copy.deepcopy(tiny_cnn)
    with torch.no_grad():
        other.fc.weight.mul_(-1)
    tiny_cnn.eval()
    other.eval()
    with torch.no_grad():
        expected = (tiny_cnn(x).argmax(1) == other(x).argmax(1)).double().mean().item()
    got = prediction_agreement(tiny_cnn, other, batches(x, y, 64))
    assert got == pytest.approx(expected)
    assert got < 1.0


def test_layer_cka_and_capture(tiny_cnn, digits):
    loader = batches(*[t[:256] for t in digits], 64)
    acts = capture_activations(tiny_cnn, "conv", loader, max_examples=100)
    assert acts.shape == (100, 8 * 8 * 8)
    assert layer_cka(tiny_cnn, copy.deepcopy(tiny_cnn), loader, layer="conv") == pytest.approx(1.0, abs=1e-9)
    scaled = copy.deepcopy(tiny_cnn)
    with torch.no_grad():  # isotropic scaling of the layer's output
        scaled.conv.weight.mul_(2.5)
        scaled.conv.bias.mul_(2.5)
    assert layer_cka(tiny_cnn, scaled, loader, layer="conv") == pytest.approx(1.0, abs=1e-9)
    fresh = nn.Conv2d(1, 8, 3, padding=1)
    other = copy.deepcopy(tiny_cnn)
    other.conv = fresh
    assert layer_cka(tiny_cnn, other, loader, layer="conv") < 0.999
