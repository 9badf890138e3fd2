"""pt2e_int8: PT2E int8 regions against the float model, the compiled graph's kernels, reload, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelscale.core.apply import apply
from modelscale.core.errors import ModelscaleError
from modelscale.techniques.quantize.pt2e_int8 import Pt2eInt8Config, Pt2eInt8Region, default_regions

pytest.importorskip("torchao", reason="PT2E quantization lives in torchao on this torch")


class Block(nn.Module):
    """LayerNorm → Linear → GELU → Linear with a residual: the shape of a transformer's FFN."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        y = x + self.down(nn.functional.gelu(self.up(self.norm(x))))
        return y if scale is None else y * scale


class Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = Block(), Block()

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.second(self.first(x, scale))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = Body()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.body(x, scale).mean(dim=1))


def batches(count: int = 4, rows: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 16, 64, generator=g) for _ in range(count)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_default_regions_are_the_children_holding_weights():
    assert default_regions(Net()) == ["body", "head"]
    assert default_regions(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.ReLU())) == ["1"]


@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_reference_graph_is_close_to_float_and_quantizes_every_linear(activations):
    model = Net().eval()
    result = apply(model, Pt2eInt8Config(activations=activations, compile=False), calibration=batches())
    assert result.record.summary["quantized_weights"] == 5  # 2 Linear per block, 2 blocks, the head
    assert [r["name"] for r in result.record.layers] == ["body", "head"]
    assert isinstance(result.model.body, Pt2eInt8Region)
    x = batches(1, rows=3, seed=7)[0]  # another batch size than the calibration's
    with torch.no_grad():
        want, got = model(x), result.model(x)
    assert got.shape == want.shape
    assert cosine(got, want) >= 0.999
    assert not torch.equal(got, want)  # int8 arithmetic ran: not the float model passed through
    static = result.record.state["qparams"]["body"]
    assert (len(static) > 0) == (activations == "static")  # calibrated scales only when static


def test_compiled_graph_runs_onednn_int8_kernels_and_matches_the_reference():
    from torch._inductor.utils import run_and_get_code

    model = Net().eval()
    calibration = batches()
    compiled = apply(model, Pt2eInt8Config(regions=("body",)), calibration=calibration).model
    reference = apply(model, Pt2eInt8Config(regions=("body",), compile=False), calibration=calibration).model
    x = batches(1, rows=2, seed=9)[0]
    with torch.no_grad():
        got, code = run_and_get_code(compiled, x)
        want = reference(x)
    source = "\n".join(code)
    assert "qlinear" in source, "Inductor did not use the oneDNN int8 Linear"
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # rounding may differ by a code or two
    assert cosine(got, model(x)) >= 0.999


def test_reload_rebuilds_the_graph_from_the_recorded_scales(tmp_path):
    from modelscale.core.saving import save_compressed
    from modelscale.models.loading import load_compressed

    model = Net().eval()
    result = apply(model, Pt2eInt8Config(compile=False), calibration=batches())
    x = batches(1, rows=1, seed=3)[0]  # batch of one: traced as two, still runs at one
    with torch.no_grad():
        out = result.model(x)
    save_compressed(tmp_path, result.model, [result.record])
    fresh = Net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # the reload must take the saved weights, not these
    reloaded = load_compressed(tmp_path, fresh).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out, rtol=1e-5, atol=1e-6)
    assert reloaded.body.qparams == result.record.state["qparams"]["body"]


def test_keyword_inputs_from_dict_batches():
    model = Net().eval()
    calibration = [{"x": b, "scale": torch.tensor(0.5)} for b in batches(2)]
    result = apply(model, Pt2eInt8Config(regions=("body",), compile=False), calibration=calibration)
    x = batches(1, seed=5)[0]
    with torch.no_grad():
        assert cosine(result.model(x, torch.tensor(0.5)), model(x, torch.tensor(0.5))) >= 0.999


def test_weights_changed_after_apply_rebuild_the_graph():
    model = Net().eval()
    result = apply(model, Pt2eInt8Config(regions=("head",), compile=False), calibration=batches(2))
    x = batches(1, seed=6)[0]
    with torch.no_grad():
        before = result.model(x)
        result.model.head.module.bias.add_(1.0)
        after = result.model(x)
    torch.testing.assert_close(after, before + 1.0, rtol=1e-3, atol=0.05)


def test_bad_input_is_one_line():
    with pytest.raises(ModelscaleError, match="calibration"):
        apply(Net(), Pt2eInt8Config())
    with pytest.raises(ModelscaleError, match="no submodule 'nope'.*body, head"):
        apply(Net(), Pt2eInt8Config(regions=("nope",)), calibration=batches(1))
    with pytest.raises(ModelscaleError, match="no Linear or Conv2d"):
        apply(nn.Sequential(nn.ReLU()), Pt2eInt8Config(), calibration=batches(1))
    with pytest.raises(ModelscaleError, match="regions"):
        Pt2eInt8Config(regions=("",))


def test_deepcopy_drops_the_compiled_graph_and_rebuilds_it():
    model = Net().eval()
    result = apply(model, Pt2eInt8Config(regions=("head",), compile=False), calibration=batches(2))
    x = batches(1, seed=8)[0]
    with torch.no_grad():
        out = result.model(x)
        twin = copy.deepcopy(result.model)
        torch.testing.assert_close(twin(x), out, rtol=1e-5, atol=1e-6)


class Residual(nn.Module):
    """conv → BN → ReLU → conv → BN, += the input, the same ReLU again: torchvision's BasicBlock."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)  # one module, called twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        return self.relu(out)


def residual_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Sequential(Residual(), Residual()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_residual_cnn_with_a_module_called_twice_quantizes(activations):
    # the x86 quantizer refused this ("Input partition has more than one output node") until each
    # call of the shared ReLU got its own name (resnet18..152, resnext and wide_resnet in the zoo)
    model = residual_net()
    g = torch.Generator().manual_seed(2)
    calibration = [torch.rand(4, 3, 12, 12, generator=g) for _ in range(3)]
    result = apply(model, Pt2eInt8Config(activations=activations, compile=False), calibration=calibration)
    assert [r["name"] for r in result.record.layers] == ["0", "1", "4"]
    assert result.record.summary["quantized_weights"] == 6  # the stem, 2 convs per block x 2, the head
    x = torch.rand(3, 3, 12, 12, generator=g)
    with torch.no_grad():
        want, got = model(x), result.model(x)
    assert cosine(got, want) >= 0.99
    assert not torch.equal(got, want)
