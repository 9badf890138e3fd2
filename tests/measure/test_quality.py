import math

import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.measure import evaluate_quality, expected_calibration_error
from tests.measure.conftest import batches


class Fixed(nn.Module):
    """Returns the logits stored for each example index (inputs are indices)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_hand_made_case_with_known_accuracy_top5_loss_and_ece():
    # 4 examples, 6 classes, confidences 0.95, 0.95 (bin 15) and 0.55, 0.55 (bin 9).
    probs = torch.tensor(
        [
            [0.95, 0.01, 0.01, 0.01, 0.01, 0.01],  # target 0: right
            [0.012, 0.95, 0.002, 0.012, 0.012, 0.012],  # target 2: wrong, and ranked last
            [0.09, 0.09, 0.55, 0.09, 0.09, 0.09],  # target 2: right
            [0.09, 0.09, 0.09, 0.55, 0.09, 0.09],  # target 3: right
        ]
    )
    targets = torch.tensor([0, 2, 2, 3])
    model = Fixed(probs.log())
    report = evaluate_quality(model, [(torch.arange(2), targets[:2]), (torch.arange(2, 4), targets[2:])])
    assert report.examples == report.predictions == 4
    assert report.accuracy == pytest.approx(0.75)
    assert report.top5 == pytest.approx(0.75) and report.topk == 5
    # |0.5 - 0.95| * 2/4 + |1.0 - 0.55| * 2/4
    assert report.ece == pytest.approx(0.45, abs=1e-6)
    expected_loss = -(math.log(0.95) + math.log(0.002) + 2 * math.log(0.55)) / 4
    assert report.loss == pytest.approx(expected_loss, rel=1e-5)
    assert report.bits_per_byte is None


def test_ece_function_perfectly_calibrated_is_zero():
    conf = torch.tensor([0.8] * 10)
    correct = torch.tensor([True] * 8 + [False] * 2)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-6)


def test_lm_uniform_logits_give_eight_bits_per_byte_and_ignore_negative_targets():
    class Uniform(nn.Module):
        def forward(self, tokens):
            return torch.zeros(*tokens.shape, 256)

    x = torch.randint(0, 256, (3, 10))
    y = torch.randint(0, 256, (3, 10))
    y[0, :4] = -100
    report = evaluate_quality(Uniform(), [(x, y)], task="lm")
    assert report.predictions == 26 and report.examples == 3
    assert report.loss == pytest.approx(math.log(256))
    assert report.bits_per_byte == pytest.approx(8.0)


def test_task_errors_are_explained():
    model = Fixed(torch.zeros(4, 3))
    with pytest.raises(ModelscaleError, match="valid: classification, lm"):
        evaluate_quality(model, [(torch.arange(2), torch.zeros(2, dtype=torch.long))], task="regression")
    with pytest.raises(ModelscaleError, match="task 'lm' needs"):
        evaluate_quality(model, [(torch.arange(2), torch.zeros(2, dtype=torch.long))], task="lm")


def test_matches_scikit_learn_metrics_on_real_digits(digits):
    from scipy.special import log_softmax
    from sklearn.metrics import accuracy_score, top_k_accuracy_score

    x, y = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.LBFGS(model.parameters(), max_iter=30)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[:1200]), y[:1200]) + 1e-3 * model[1].weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    test_x, test_y = x[1200:], y[1200:]
    report = evaluate_quality(model, batches(test_x, test_y, 100))
    with torch.no_grad():
        logits = model(test_x).double().numpy()
    labels = test_y.numpy()
    assert report.accuracy > 0.85  # a linear model learns digits
    assert report.accuracy == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    reference_loss = -log_softmax(logits, axis=1)[range(len(labels)), labels].mean()
    assert report.loss == pytest.approx(reference_loss, rel=1e-5)
    assert report.top5 == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=list(range(10))))
    assert 0.0 <= report.ece < 0.2
