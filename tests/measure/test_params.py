import torch
import torchvision
from torch import nn

from modelscale.measure import count_params
from modelscale.techniques.prune.masks import attach_mask


def test_resnet50_and_mobilenet_v2_match_torchvision_counts():
    for name, expected in (("resnet50", 25_557_032), ("mobilenet_v2", 3_504_872)):
        model = torchvision.models.get_model(name, weights=None)
        report = count_params(model)
        assert report.total == expected
        assert report.trainable == expected
        assert report.non_embedding == expected  # no embeddings in a CNN
        assert report.total == torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def test_nonzero_counts_effective_weights_of_a_masked_layer():
    layer = nn.Linear(10, 8)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.0)  # no accidental zeros
        layer.bias.fill_(1.0)
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[:4] = True  # keep half of the weight
    attach_mask(layer, mask)
    assert any("original" in n for n, _ in layer.named_parameters())  # really parametrized
    report = count_params(layer)
    assert report.total == 8 * 10 + 8
    assert report.nonzero == 40 + 8
    assert abs(report.sparsity - 40 / 88) < 1e-12


def test_trainable_follows_requires_grad_of_originals():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    attach_mask(model[0], torch.ones(3, 4, dtype=torch.bool))
    model[0].parametrizations.weight.original.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    report = count_params(model)
    assert report.total == 15 + 8
    assert report.trainable == 3 + 6  # model[0].bias and model[1].weight


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(50, 16)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 12, 16))
        self.block = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.wte.weight  # tied


def test_non_embedding_excludes_token_and_position_embeddings_and_counts_tied_once():
    report = count_params(TinyLM())
    assert report.total == 50 * 16 + 12 * 16 + 16 * 16 + 16  # tied head counted once
    assert report.embedding == 50 * 16 + 12 * 16
    assert report.non_embedding == 16 * 16 + 16
