"""`modelscale train --nproc 2` starts torchrun: rank 0 alone saves and prints; the sharded checkpoint
it leaves converts to the usual safetensors folder in one process (`--resume` of the finished run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from modelscale.cli import main
from modelscale.core.errors import ModelscaleError
from modelscale.train.launch import strip_option, torchrun_command

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "mlp", "--data", "digits", "--epochs", "1", "--max-steps", "4", "--batch-size", "64"]
TRAIN += ["--progress", "false", "--parallel", "fsdp"]


def test_torchrun_command_drops_nproc():
    cmd = torchrun_command(["train", "gpt", "--nproc", "4", "--out", "m", "--nproc=4"], 4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:] == ["-m", "modelscale", "train", "gpt", "--out", "m"]
    assert strip_option(["--nproc"], "--nproc") == []
    with pytest.raises(ModelscaleError, match="--nproc"):
        torchrun_command([], 0)


def test_train_nproc_2_then_convert_at_world_1(tmp_path, capsys):
    ckpt, first, second = tmp_path / "ckpt", tmp_path / "m2", tmp_path / "m1"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    argv = [*TRAIN, "--nproc", "2", "--activation-checkpointing", "--checkpoint-dir", str(ckpt)]
    proc = subprocess.run(
        [sys.executable, "-m", "modelscale", *argv, "--out", str(first), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # one JSON document: only rank 0 printed
    assert report["train"]["steps"] == 4
    assert json.loads((ckpt / "latest.json").read_text())["world_size"] == 2
    trained = load_file(first / "model.safetensors")

    argv = [*TRAIN, "--checkpoint-dir", str(ckpt), "--resume", "--out", str(second), "--json"]
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["train"]["steps"] == 4 and again["test"] == report["test"]
    converted = load_file(second / "model.safetensors")
    assert converted.keys() == trained.keys()
    assert all((converted[k] == trained[k]).all() for k in trained)
