"""No file can opt into pickle loading: every loading path, with a pickle that writes a marker file.

Each case checks three things, so it can fail either way: without the user's flag the marker never
appears and the one-line message names the opt-in; with the user's own `--allow-pickle` (or
`allow_pickle=True`) the pickle does run (the marker appears).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from modelscale import load_compressed
from modelscale.cli import main
from modelscale.core.errors import ModelscaleError
from modelscale.core.trust import file_options
from modelscale.models import build_model
from modelscale.models.loading import build_for, save_model_dir

OPT_IN = "--allow-pickle"


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path) -> Path:
    torch.save(_Payload(marker), path)
    return path


def _folder(tmp_path: Path, marker: Path, *, relative: bool = False, ask: bool = True) -> Path:
    """A saved mlp folder whose manifest names a pickle as weights (and asks for allow_pickle)."""
    folder = tmp_path / "received"
    save_model_dir(folder, build_for("mlp", input_shape=(1, 8, 8), num_classes=10))
    evil = _evil_pickle(folder / "weights.pt", marker)
    manifest = json.loads((folder / "modelscale.json").read_text())
    manifest["model"]["weights"] = "weights.pt" if relative else str(evil)
    if ask:
        manifest["model"]["allow_pickle"] = True
    (folder / "modelscale.json").write_text(json.dumps(manifest))
    return folder


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    _, err = capsys.readouterr()
    return code, err


def _command(name: str, folder: Path, out: Path) -> list[str]:
    return {
        "profile": ["profile", str(folder), "--no-latency"],
        "eval": ["eval", str(folder), "--data", "digits"],
        "compress": ["compress", str(folder), "--technique", "magnitude_prune", "--out", str(out)],
        "compare": ["compare", str(folder), str(folder)],
        "sensitivity": [
            "sensitivity",
            str(folder),
            "--data",
            "digits",
            "--technique",
            "magnitude_prune",
            "--strengths",
            "0.5",
        ],  # fmt: skip
        "export": ["export", str(folder), "--out", str(out)],
    }[name]


COMMANDS = ("profile", "eval", "compress", "compare", "sensitivity", "export")


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_manifest_cannot_grant_itself_pickle(capsys, tmp_path, monkeypatch, command, relative):
    marker = tmp_path / "MARKER"
    folder = _folder(tmp_path, marker, relative=relative)
    if relative:
        monkeypatch.chdir(folder)  # the reported exploit: a relative weights.pt, run inside the folder
    code, err = _cli(capsys, *_command(command, folder, tmp_path / "out"))
    assert code == 2
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "asks for allow_pickle" in err and OPT_IN in err
    assert not (tmp_path / "out").exists()  # refused before any work
    _cli(capsys, *_command(command, folder, tmp_path / "out"), OPT_IN)
    assert marker.exists()  # the user's own flag does allow it: the test can fail


def test_a_manifest_naming_a_pickle_without_asking_is_still_safe(capsys, tmp_path):
    marker = tmp_path / "MARKER"
    folder = _folder(tmp_path, marker, ask=False)
    code, err = _cli(capsys, "profile", str(folder), "--no-latency")
    assert code == 2 and not marker.exists()
    assert "pickled" in err and "allow" in err


def test_python_load_compressed_needs_the_callers_own_flag(tmp_path):
    marker = tmp_path / "MARKER"
    folder = _folder(tmp_path, marker)
    with pytest.raises(ModelscaleError, match="asks for allow_pickle: True"):
        load_compressed(folder)
    assert not marker.exists()
    with pytest.raises(ModelscaleError):  # the payload is not a state dict, but it ran
        load_compressed(folder, allow_pickle=True)
    assert marker.exists()


def _recipe(tmp_path: Path, folder: Path, where: str) -> Path:
    body: dict = {"version": 1, "name": "received", "data": {"source": "digits", "seed": 0}}
    if where == "model":
        body["model"] = {"load": str(folder)}
    else:
        body["model"] = {"name": "mlp"}
        body["baseline"] = {"load": str(folder)}
    body["steps"] = [{"name": "prune", "technique": "magnitude_prune", "config": {"amount": 0.5}}]
    body["measure"] = {"metrics": ["params"]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("where", ["model", "baseline"])
def test_a_recipe_cannot_load_a_folder_that_grants_itself_pickle(capsys, tmp_path, where):
    marker = tmp_path / "MARKER"
    folder = _folder(tmp_path, marker)
    recipe = _recipe(tmp_path, folder, where)
    store, run_dir = str(tmp_path / "store.db"), str(tmp_path / "run")
    code, err = _cli(capsys, "run", str(recipe), "--store", store, "--run-dir", run_dir)
    assert code == 2 and not marker.exists()
    assert "asks for allow_pickle" in err and OPT_IN in err and len(err.strip().splitlines()) == 1
    _cli(capsys, "run", str(recipe), "--store", store, "--run-dir", run_dir, OPT_IN)
    assert marker.exists()


def test_a_recipe_kwargs_cannot_grant_pickle(capsys, tmp_path):
    marker = tmp_path / "MARKER"
    evil = _evil_pickle(tmp_path / "evil.pt", marker)

    def recipe(kwargs: dict) -> str:
        body = {
            "version": 1,
            "name": "kw",
            "model": {"name": "mlp", "kwargs": kwargs},
            "data": {"source": "digits", "seed": 0},
            "steps": [{"name": "prune", "technique": "magnitude_prune"}],
            "measure": {"metrics": ["params"]},
        }
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(body))
        return str(path)

    store, run_dir = str(tmp_path / "store.db"), str(tmp_path / "run")
    asking = recipe({"weights": str(evil), "allow_pickle": True})
    for extra in ((), (OPT_IN,)):  # the file's request is refused even when the user opts in
        code, err = _cli(capsys, "run", asking, "--store", store, "--run-dir", run_dir, *extra)
        assert code == 2 and not marker.exists() and OPT_IN in err and "kwargs.allow_pickle" in err
    naming = recipe({"weights": str(evil)})
    _cli(capsys, "run", naming, "--store", store, "--run-dir", run_dir)
    assert not marker.exists()  # weights_only=True refuses the payload
    _cli(capsys, "run", naming, "--store", store, "--run-dir", run_dir, OPT_IN)
    assert marker.exists()


def test_a_study_cannot_grant_pickle_through_model_options(capsys, tmp_path):
    marker = tmp_path / "MARKER"
    evil = _evil_pickle(tmp_path / "evil.pt", marker)
    study = {
        "name": "evil",
        "model": "mlp",
        "model_options": {"weights": str(evil), "allow_pickle": True},
        "widths": [0.25],
        "train": {"epochs": 1, "progress": False},
        "n_boot": 0,
        "save_models": False,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    argv = ["scale", str(path), "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "out")]
    code, err = _cli(capsys, *argv)
    assert code == 2 and not marker.exists()
    assert "asks for allow_pickle" in err and OPT_IN in err and len(err.strip().splitlines()) == 1
    _cli(capsys, *argv, OPT_IN)
    assert marker.exists()


def test_trust_remote_code_is_never_granted_by_a_file():
    with pytest.raises(ModelscaleError, match="never runs a model's custom code"):
        file_options({"trust_remote_code": True}, where="x.yaml", allow_pickle=True)
    assert file_options({"allow_pickle": True, "width": 2}, where="x", allow_pickle=True) == {"width": 2}


def test_random_bytes_are_not_a_weights_file_and_never_steer_to_the_unsafe_flag(capsys, tmp_path):
    junk = tmp_path / "w.pt"
    junk.write_bytes(os.urandom(4096))
    code, err = _cli(capsys, "profile", "mlp", "--weights", str(junk), "--no-latency")
    assert code == 2
    assert "not a weights file" in err and "allow-pickle" not in err and "pickled" not in err


def test_hf_folder_with_pickled_weights_is_one_line(capsys, tmp_path):
    pytest.importorskip("transformers")
    marker = tmp_path / "MARKER"
    model = build_model("hf:tiny-bert", num_classes=2, input_shape=(16,))
    folder = tmp_path / "hf"
    model.hf.save_pretrained(folder, safe_serialization=True)
    (folder / "model.safetensors").unlink()
    _evil_pickle(folder / "pytorch_model.bin", marker)
    capsys.readouterr()  # save_pretrained's own progress output
    code, err = _cli(capsys, "profile", f"hf:{folder}", "--num-classes", "2", "--no-latency")
    assert code == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "pickled weights (pytorch_model.bin)" in err and OPT_IN in err
