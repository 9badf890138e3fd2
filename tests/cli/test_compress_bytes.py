"""`compress --json` reports the bytes of the file its `--out` wrote — every technique, both storages —
and a pruned model's file is never larger than its baseline's (issue: sizes are the artifact's bytes)."""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from modelscale.cli import main
from modelscale.core.registry import get_technique, list_techniques

GENERIC = [n for n in list_techniques() if get_technique(n).applies_to != "hf"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "mlp"
    code = main(["train", "mlp", "--data", "digits", "--epochs", "2", "--out", str(out), "--json"])
    assert code == 0
    return out


def _compress(capsys, baseline, out, technique, *extra):
    code = main(
        ["compress", str(baseline), "--data", "digits", "--technique", technique, "--out", str(out),
         "--json", *extra]
    )  # fmt: skip
    text, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(text)


@pytest.mark.parametrize("technique", GENERIC)
def test_reported_bytes_are_the_written_file(capsys, tmp_path, baseline, technique):
    data = _compress(capsys, baseline, tmp_path / "o", technique)
    weights = tmp_path / "o" / "model" / "model.safetensors"
    assert data["file"]["bytes"] == os.path.getsize(weights)
    assert data["comparison"]["other"]["size"]["file_bytes"] == os.path.getsize(weights)
    # the zipped figure is the file zipped, as `zip -9` would hold it
    archive = tmp_path / "w.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(zipfile.ZipInfo("model.safetensors", date_time=(1980, 1, 1, 0, 0, 0)),
                   weights.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)  # fmt: skip
    assert data["file"]["zipped_bytes"] == os.path.getsize(archive)
    base_bytes = data["comparison"]["base"]["size"]["file_bytes"]
    assert base_bytes == os.path.getsize(baseline / "model.safetensors")
    assert data["comparison"]["file_ratio"] == pytest.approx(base_bytes / os.path.getsize(weights))


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_magnitude_pruning_is_never_larger_than_the_baseline(capsys, tmp_path, baseline, storage):
    data = _compress(capsys, baseline, tmp_path / storage, "magnitude_prune", "--amount", "0.8",
                     "--storage", storage)  # fmt: skip
    written = os.path.getsize(tmp_path / storage / "model" / "model.safetensors")
    assert written == data["file"]["bytes"] and data["file"]["storage"] == storage
    base = os.path.getsize(baseline / "model.safetensors")
    assert written <= base
    if storage == "sparse":
        assert written < 0.5 * base  # 80% zeros: bitmask + non-zero values
    manifest = json.loads((tmp_path / storage / "model" / "modelscale.json").read_text())
    assert manifest["storage"] == storage
