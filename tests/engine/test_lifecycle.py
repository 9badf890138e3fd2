"""The engine runs each technique's registered lifecycle, whichever front door builds the steps."""

from __future__ import annotations

import json

import pytest
import yaml
from torch import nn

from modelscale import load_compressed
from modelscale.cli import main
from modelscale.engine import finetune_step, open_session, run_steps, technique_step
from modelscale.techniques.prune import GradualPruneConfig
from modelscale.techniques.quantize import QATConfig, StaticInt8Config
from modelscale.techniques.quantize.static_int8 import StaticInt8Layer
from modelscale.train import TrainConfig


def test_compress_gradual_prune_reaches_its_amount_after_the_finetune(capsys, tmp_path):
    out = tmp_path / "pruned"
    code = main(
        ["compress", "mlp", "--data", "digits", "--technique", "gradual_prune", "--amount", "0.8",
         "--finetune-epochs", "5", "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["record"]["technique"] == "gradual_prune" and result["record"]["state"]["finalized"] is True
    reloaded = load_compressed(out / "model")
    prunable = [m.weight for m in reloaded.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in prunable) / sum(w.numel() for w in prunable)
    assert zeros == pytest.approx(0.8, abs=0.01)


def test_the_old_field_name_still_works_on_the_command_line(capsys, tmp_path):
    code = main(
        ["compress", "mlp", "--data", "digits", "--technique", "gradual_prune", "--final-sparsity", "0.5",
         "--json"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["record"]["config"]["amount"] == 0.5


def test_compress_qat_saves_real_int8_layers(capsys, tmp_path):
    out = tmp_path / "qat"
    code = main(
        ["compress", "mlp", "--data", "digits", "--technique", "qat", "--finetune-epochs", "3",
         "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["record"]["technique"] == "static_int8"  # the QAT record was replaced by finalize
    reloaded = load_compressed(out / "model")
    assert sum(isinstance(m, StaticInt8Layer) for m in reloaded.modules()) >= 2


def test_a_lifecycle_without_training_is_finalized_at_once():
    session = open_session("mlp", data="digits", progress=False)
    run_steps(session, [technique_step(GradualPruneConfig(amount=0.6))])
    record = session.bundle.records[-1]
    assert record.state["finalized"] is True and record.summary["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_qat_then_finetune_through_the_engine():
    session = open_session("mlp", data="digits", progress=False)
    run_steps(session, [technique_step(QATConfig()), finetune_step(TrainConfig(epochs=1, progress=False))])
    assert [r.technique for r in session.bundle.records] == [StaticInt8Config.type]
    assert any(isinstance(m, StaticInt8Layer) for m in session.model.modules())


def test_compress_distill_from_a_teacher_folder(capsys, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["train", "mlp", "--data", "digits", "--epochs", "3", "--out", str(teacher)]) == 0
    capsys.readouterr()
    code = main(
        ["compress", str(teacher), "--data", "digits", "--technique", "magnitude_prune", "--amount", "0.5",
         "--finetune-epochs", "1", "--distill-from", str(teacher), "--json"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert steps[1]["teacher"] == str(teacher) and steps[1]["train"]["epochs"] == 1


def test_recipe_label_smoothing_changes_the_recorded_training_loss(tmp_path):
    from modelscale.pipeline import run_recipe

    losses = {}
    for smoothing in (0.0, 0.2):
        recipe = {
            "version": 1,
            "name": f"ls{int(smoothing * 10)}",
            "model": {"name": "mlp"},
            "data": {"source": "digits", "seed": 0},
            "baseline": {"train": {"epochs": 2, "seed": 0, "label_smoothing": smoothing}},
            "steps": [],
            "measure": {"metrics": ["params"]},
        }
        path = tmp_path / f"{recipe['name']}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        result = run_recipe(path, store=tmp_path / "s.db", run_dir=tmp_path / recipe["name"], progress=False)
        losses[smoothing] = result.variants[0].steps[0].headline.get("train.final_train_loss")
        if losses[smoothing] is None:  # the headline may omit it: read the step marker
            marker = json.loads(
                (tmp_path / recipe["name"] / "default" / "0-baseline" / "DONE.json").read_text()
            )
            losses[smoothing] = marker["summary"]["train"]["final_train_loss"]
    # Label smoothing raises the training loss floor: same seed and data, visibly different loss.
    assert losses[0.2] > losses[0.0] + 0.05, losses
