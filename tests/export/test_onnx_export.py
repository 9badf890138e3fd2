"""ONNX export: real ONNX Runtime sessions must reproduce the PyTorch outputs (atol 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modelscale.core.errors import ModelscaleError
from modelscale.export import OrtRunner, check_agreement, export_onnx, onnx_info

ATOL = 1e-4  # fp32 ONNX Runtime vs PyTorch eager: only summation order differs


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_digits_models_match_pytorch(name, trained, exported, test_loader, digits):
    model, path = trained[name], exported[name]
    info = onnx_info(path)
    assert info["exporter"] == "dynamo"
    assert info["inputs"]["input"] == ["batch", 1, 8, 8]
    runner = OrtRunner(path, threads=1)
    result = check_agreement(model, runner, test_loader)
    assert result["examples"] == len(digits.test)
    assert result["max_abs_diff"] < ATOL
    assert result["class_agreement"] >= 0.99
    assert result["accuracy_onnx"] >= 0.85  # the model really learned digits (3 epochs)
    # dynamic batch: sizes other than the example's run and match
    for b in (1, 7):
        x = torch.rand(b, 1, 8, 8)
        torch.testing.assert_close(runner(x), model(x).detach(), atol=ATOL, rtol=0)
    # numpy in works too; float64 is cast to the model's float32
    out = runner(np.random.rand(3, 1, 8, 8))
    assert out.shape == (3, 10) and out.dtype == torch.float32


def test_pruned_model_exports_with_masks_baked(trained, tmp_path):
    from torch.nn.utils import parametrize

    from modelscale.core.apply import apply
    from modelscale.techniques.prune.magnitude import MagnitudePruneConfig

    pruned = apply(trained["cnn"], MagnitudePruneConfig(amount=0.6)).model.eval()
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)
    path = export_onnx(pruned, torch.rand(2, 1, 8, 8), tmp_path / "pruned.onnx")
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)  # the input model is untouched
    x = torch.rand(16, 1, 8, 8)
    torch.testing.assert_close(OrtRunner(path)(x), pruned(x).detach(), atol=ATOL, rtol=0)
    # the stored conv weights carry the zeros: baked, not a mask applied at run time
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in conv_weights]
    assert len(arrays) == len(convs)
    zeros = sum(int((a == 0).sum()) for a in arrays) / sum(a.size for a in arrays)
    assert zeros >= 0.59
    assert not any(n.op_type in ("Mul", "Where") for n in proto.graph.node if n.input[0] in conv_weights)


def test_gpt_exports_with_dynamic_batch(tmp_path):
    from modelscale.models import build_model

    model = build_model("gpt", block_size=32, n_layer=2, n_head=2, n_embd=64).eval()
    path = export_onnx(model, torch.randint(0, 256, (2, 32)), tmp_path / "gpt.onnx")
    assert onnx_info(path)["inputs"]["input"] == ["batch", 32]
    runner = OrtRunner(path)
    for b in (1, 3):
        idx = torch.randint(0, 256, (b, 32))
        out = runner(idx)
        assert out.shape == (b, 32, 256)
        torch.testing.assert_close(out, model(idx).detach(), atol=ATOL, rtol=0)


def test_torchscript_exporter_on_request(trained, tmp_path):
    model = trained["mlp"]
    path = export_onnx(model, torch.rand(2, 1, 8, 8), tmp_path / "ts.onnx", exporter="torchscript")
    assert onnx_info(path)["exporter"] == "torchscript"
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(OrtRunner(path)(x), model(x).detach(), atol=ATOL, rtol=0)


class _DataDependentBranch(nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, TorchScript traces one path."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 0:
            return self.fc(x)
        return -self.fc(x)


def test_falls_back_to_torchscript_and_records_why(tmp_path):
    model = _DataDependentBranch().eval()
    x = torch.rand(2, 4)
    with pytest.warns(UserWarning, match="TorchScript"):
        path = export_onnx(model, x, tmp_path / "branch.onnx")
    info = onnx_info(path)
    assert info["exporter"] == "torchscript"
    assert "\n" not in info["dynamo_error"] and info["dynamo_error"]
    torch.testing.assert_close(OrtRunner(path)(x), model(x).detach(), atol=ATOL, rtol=0)


class _Eigh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


def test_unsupported_op_is_a_one_line_error_naming_it(tmp_path):
    with pytest.raises(ModelscaleError) as err:
        export_onnx(_Eigh(), torch.rand(2, 4, 4), tmp_path / "eigh.onnx", exporter="dynamo")
    message = str(err.value)
    assert "\n" not in message and "linalg_eigh" in message
    assert not (tmp_path / "eigh.onnx").exists()
    assert list(tmp_path.iterdir()) == []  # no staging leftovers


def test_corrupt_or_missing_onnx_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07 definitely not a protobuf model" * 10)
    for call in (lambda: OrtRunner(bad), lambda: onnx_info(bad)):
        with pytest.raises(ModelscaleError) as err:
            call()
        assert "\n" not in str(err.value) and "corrupt.onnx" in str(err.value)
    with pytest.raises(ModelscaleError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")


def test_bad_arguments_are_one_line_errors(trained, tmp_path, exported):
    model = trained["mlp"]
    with pytest.raises(ModelscaleError, match="valid options"):
        export_onnx(model, torch.rand(1, 1, 8, 8), tmp_path / "m.onnx", exporter="tflite")
    with pytest.raises(ModelscaleError, match="tensor or a tuple"):
        export_onnx(model, [1.0, 2.0], tmp_path / "m.onnx")
    with pytest.raises(ModelscaleError, match="cannot run the example inputs"):
        export_onnx(model, torch.rand(1, 3, 5), tmp_path / "m.onnx")
    runner = OrtRunner(exported["mlp"])
    with pytest.raises(ModelscaleError, match="expects float"):
        runner(torch.ones(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ModelscaleError, match="takes 1 input"):
        runner(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ModelscaleError, match="not available"):
        OrtRunner(exported["mlp"], providers=["NoSuchExecutionProvider"])


def test_latency_reports_ordered_statistics(exported):
    stats = OrtRunner(exported["cnn"], threads=1).latency(torch.rand(4, 1, 8, 8), warmup=1, repeats=5)
    assert stats["repeats"] == 5 and stats["batch_size"] == 4 and stats["threads"] == 1
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["max_ms"]
