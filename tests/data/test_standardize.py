"""`npz:` standardization: train-split statistics only, applied to every split, recorded and checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modelscale.core.errors import ModelscaleError
from modelscale.data import load_data


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    from sklearn.datasets import load_wine

    d = load_wine()  # 178 real wines, 13 features on scales from ~0.1 to ~1000
    path = tmp_path_factory.mktemp("wine") / "wine.npz"
    np.savez(path, x=d.data.astype(np.float32), y=d.target)
    return path


def _split(ds):
    return ds.tensors()[0]


def test_train_features_get_mean_0_sd_1_and_other_splits_reuse_the_train_statistics(wine):
    raw = load_data(f"npz:{wine}")
    std = load_data(f"npz:{wine}", standardize=True)
    train = _split(std.train)
    assert torch.allclose(train.mean(0), torch.zeros(13), atol=1e-4)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(13), atol=1e-4)
    # val and test are transformed with the train split's mean and sd, not their own
    mean = _split(raw.train).double().mean(0)
    sd = _split(raw.train).double().std(0, unbiased=False)
    expected = ((_split(raw.test).double() - mean) / sd).float()
    assert torch.allclose(_split(std.test), expected, atol=1e-4)
    assert not torch.allclose(_split(std.test).mean(0), torch.zeros(13), atol=1e-3)
    info = std.meta["standardize"]
    assert info["per"] == "feature" and info["count"] == 13 and info["fitted_on"].startswith("train split")
    assert raw.meta["standardize"] is None
    assert std.meta["split_sizes"] == raw.meta["split_sizes"]


def test_image_shaped_inputs_are_standardized_per_channel(tmp_path):
    g = np.random.default_rng(0)
    x = np.stack([g.normal(5.0, 2.0, (40, 4, 4)), g.normal(-3.0, 0.5, (40, 4, 4))], axis=1).astype(np.float32)
    path = tmp_path / "img.npz"
    np.savez(path, x=x, y=np.arange(40) % 2)
    data = load_data(f"npz:{path}", standardize=True)
    train = _split(data.train)
    assert data.meta["standardize"]["per"] == "channel" and data.meta["standardize"]["count"] == 2
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(train.std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)


def test_bad_standardize_options_are_one_line_errors(wine):
    with pytest.raises(ModelscaleError, match="source 'digits' does not take option.*standardize"):
        load_data("digits", standardize=True)
    with pytest.raises(ModelscaleError, match="standardize must be true or false"):
        load_data(f"npz:{wine}", standardize="yes")


class _Done:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def test_cli_standardize_trains_wine_far_better_and_a_mismatch_warns(wine, tmp_path, capsys):
    from modelscale.cli import main

    def _cli(*argv):
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return _Done(code, out, err)

    common = ["--data", f"npz:{wine}", "--epochs", "30"]
    raw = _cli("train", "mlp", *common, "--out", str(tmp_path / "raw"), "--json")
    std = _cli("train", "mlp", *common, "--standardize", "--out", str(tmp_path / "std"), "--json")
    assert raw.returncode == 0 and std.returncode == 0, raw.stderr + std.stderr
    acc_raw = json.loads(raw.stdout)["test"]["accuracy"]
    acc_std = json.loads(std.stdout)["test"]["accuracy"]
    assert acc_std >= 0.9 and acc_std > acc_raw + 0.1
    manifest = json.loads((tmp_path / "std" / "modelscale.json").read_text())
    assert manifest["meta"]["data_options"] == {"standardize": True}
    assert manifest["meta"]["standardize"]["count"] == 13
    bad = _cli("eval", str(tmp_path / "std"), "--data", f"npz:{wine}", "--json")
    assert (
        bad.returncode == 0
        and "trained on standardized data" in bad.stderr
        and "add --standardize" in bad.stderr
    )
    good = _cli("eval", str(tmp_path / "std"), "--data", f"npz:{wine}", "--standardize", "--json")
    assert good.returncode == 0 and "standardized data" not in good.stderr
    assert json.loads(good.stdout)["accuracy"] == pytest.approx(acc_std)
