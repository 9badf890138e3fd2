"""Recipe parsing and validation: field-path errors, unknown keys at every level, sweeps, example recipes."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline import load_recipe, patch_recipe, read_recipe
from modelscale.pipeline.variants import expand_sweeps

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

BASE = {
    "version": 1,
    "name": "t",
    "model": {"name": "cnn", "kwargs": {"width": 0.5}},
    "data": {"source": "digits", "seed": 0},
    "baseline": {"train": {"epochs": 2, "lr": 0.003}},
    "steps": [
        {"technique": "magnitude_prune", "config": {"amount": 0.5}},
        {"name": "tune", "finetune": {"epochs": 1}},
    ],
    "measure": {"batch_sizes": [1, 8], "metrics": ["accuracy", "params"]},
}


def with_(**changes):
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def test_yaml_and_json_give_the_same_validated_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "r.json").write_text(json.dumps(BASE))
    a = load_recipe(tmp_path / "r.yaml").variants[0]
    b = load_recipe(tmp_path / "r.json").variants[0]
    assert a.to_dict() == b.to_dict()
    d = a.to_dict()
    assert [s["name"] for s in d["steps"]] == ["magnitude_prune", "tune"]
    assert d["steps"][0]["config"]["amount"] == 0.5 and d["steps"][0]["config"]["type"] == "magnitude_prune"
    assert d["steps"][1]["finetune"]["epochs"] == 1 and d["steps"][1]["finetune"]["type"] == "train"
    assert d["measure"]["batch_sizes"] == [1, 8]
    # the normalized recipe is itself a valid recipe that normalizes to the same thing
    assert load_recipe(d).variants[0].to_dict() == d


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {
                "steps": [
                    {"finetune": {}},
                    {"finetune": {}},
                    {"technique": "magnitude_prune", "config": {"amount": 1.5}},
                ]
            },
            "steps[2].config.amount: must be < 1.0",
        ),
        (
            {"steps": [{"technique": "magnitude_prun"}]},
            "steps[0].technique: unknown technique 'magnitude_prun'; valid options: ",
        ),
        (
            {"steps": [{"technique": "magnitude_prune", "config": {"amout": 0.5}}]},
            "steps[0].config: unknown field(s) amout",
        ),
        (
            {"steps": [{"technique": "magnitude_prune", "confg": {}}]},
            "steps[0]: unknown key(s) confg; valid: technique, name, config",
        ),
        (
            {"steps": [{"technique": "magnitude_prune", "config": {"target": {"includ": ["a"]}}}]},
            "steps[0].config.target: unknown key(s) includ",
        ),
        (
            {"steps": [{"finetune": {"optimizer": "adam"}}]},
            "steps[0].finetune.optimizer: must be one of sgd, adamw",
        ),
        ({"steps": [{"finetune": {"epoch": 3}}]}, "steps[0].finetune: unknown field(s) epoch for train"),
        (
            {"steps": [{"finetune": {}, "export": {}}]},
            "steps[0]: needs exactly one of technique, finetune, distill, export",
        ),
        (
            {"steps": [{"name": "a", "finetune": {}}, {"name": "a", "finetune": {}}]},
            "steps[1].name: 'a' is used twice",
        ),
        (
            {"steps": [{"name": "baseline", "finetune": {}}]},
            "steps[0].name: 'baseline' is not a valid step name",
        ),
        ({"steps": [{"export": {"format": "tflite"}}]}, "steps[0].export.format: must be one of onnx"),
        ({"baseline": {"train": {"epochs": 0}}}, "baseline.train.epochs: must be >= 1, got 0"),
        ({"baseline": {"trian": {}}}, "baseline: unknown key(s) trian; valid: train, load"),
        (
            {"baseline": {"load": "/nonexistent/model"}},
            "baseline.load: '/nonexistent/model' is not a saved modelscale model folder",
        ),
        ({"model": {"name": "cnn", "kwargs": {"width": -1}}}, "model.kwargs.width: must be a number > 0"),
        (
            {"model": {"name": "cnn", "kwargs": {"foo": 1}}},
            "model.kwargs: model 'cnn' does not take foo; its options are",
        ),
        (
            {"model": {"name": "cnn", "kwargs": {"allow_pickle": True}}},
            "model.kwargs.allow_pickle: not allowed in recipes",
        ),
        ({"model": {"name": "resnet"}}, "model.name: unknown model 'resnet'; valid: "),
        ({"model": {"name": "cnn", "size": 3}}, "model: unknown key(s) size; valid: name, kwargs, load"),
        ({"data": {"source": "mnist"}}, "data.source: must be one of cifar10, digits"),
        (
            {"data": {"source": "digits", "test_fraction": 0.9}},
            "data: val_fraction + test_fraction must be < 1",
        ),
        ({"data": {"source": "digits", "shuffle": True}}, "data: unknown field(s) shuffle for data"),
        (
            {"data": {"source": "digits", "augment": {"crop": 1}}},
            "data.augment: unknown field(s) crop for augment; valid fields: crop_padding",
        ),
        (
            {"measure": {"metrics": ["acc"]}},
            "measure.metrics: must be among params, size, macs, accuracy, latency, memory",
        ),
        ({"measure": {"devices": ["tpu"]}}, "measure.devices: must be cpu, cuda or cuda:N"),
        ({"measure": {"devices": "cpu"}}, "measure.devices: must be a list"),
        ({"measure": {"dtypes": ["int3"]}}, "measure.dtypes: must be among float32"),
        (
            {"extra": 1},
            "recipe: unknown key(s) extra; valid: version, name, model, data, baseline, steps, measure",
        ),
        ({"version": 2}, "version: recipe version 2 is not supported; use version: 1"),
        ({"name": "has space"}, "name: must be a short name"),
    ],
)
def test_errors_name_the_field_path_and_the_options(changes, expected):
    with pytest.raises(ModelscaleError) as info:
        load_recipe(with_(**changes))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_sections():
    data = with_()
    del data["data"]
    with pytest.raises(ModelscaleError, match="recipe: missing data"):
        load_recipe(data)


def test_distill_teacher_must_be_baseline_or_an_earlier_step():
    pytest.importorskip("modelscale.techniques.distill")
    steps = [{"name": "p", "technique": "magnitude_prune"}, {"distill": {"teacher": "later"}}]
    with pytest.raises(
        ModelscaleError,
        match=r"steps\[1\]\.distill\.teacher: 'later' is not baseline or an earlier step; valid: baseline, p",
    ):
        load_recipe(with_(steps=steps))
    with pytest.raises(ModelscaleError, match=r"steps\[0\]\.distill\.config\.temperature: must be > 0"):
        load_recipe(with_(steps=[{"distill": {"config": {"temperature": 0.0}}}]))
    ok = load_recipe(
        with_(
            steps=[
                *steps[:1],
                {"distill": {"teacher": "p", "student": {"name": "cnn", "kwargs": {"width": 0.25}}}},
            ]
        )
    )
    step = ok.variants[0].steps[1]
    assert (
        step.kind == "distill"
        and step.config.teacher == "p"
        and step.config.student.kwargs == {"width": 0.25}
    )


def test_sweeps_expand_to_the_cartesian_product_with_readable_labels():
    data = with_(
        steps=[
            {"technique": "magnitude_prune", "config": {"amount": {"sweep": [0.3, 0.5, 0.7]}}},
            {"finetune": {"lr": {"sweep": [0.001, 0.0001]}, "epochs": 1}},
        ]
    )
    plan = load_recipe(data)
    labels = [v.variant.label for v in plan.variants]
    assert len(labels) == 6 and len(set(labels)) == 6
    assert labels[0] == "amount=0.3,lr=0.001" and labels[-1] == "amount=0.7,lr=0.0001"
    assert len({v.variant.slug for v in plan.variants}) == 6
    assert all("/" not in v.variant.slug and "," not in v.variant.slug for v in plan.variants)
    amounts = sorted({v.steps[0].config.amount for v in plan.variants})
    assert amounts == [0.3, 0.5, 0.7]
    assert plan.variants[1].variant.values == {"steps[0].config.amount": 0.3, "steps[1].finetune.lr": 0.0001}


def test_sweep_labels_use_longer_paths_when_names_clash():
    data = with_(
        steps=[{"finetune": {"lr": {"sweep": [0.1, 0.2]}}}], baseline={"train": {"lr": {"sweep": [0.3]}}}
    )
    labels = [v.label for v in expand_sweeps(data)]
    assert labels == ["train.lr=0.3,finetune.lr=0.1", "train.lr=0.3,finetune.lr=0.2"]


def test_every_sweep_value_is_validated_and_the_variant_named():
    data = with_(steps=[{"technique": "magnitude_prune", "config": {"amount": {"sweep": [0.5, 1.2]}}}])
    with pytest.raises(
        ModelscaleError, match=r"variant amount=1\.2: steps\[0\]\.config\.amount: must be < 1\.0"
    ):
        load_recipe(data)
    for bad, msg in (([], "non-empty list"), ([[1]], "must be scalars"), ([1, 1], "twice")):
        data = with_(steps=[{"technique": "magnitude_prune", "config": {"amount": {"sweep": bad}}}])
        with pytest.raises(ModelscaleError, match=msg):
            load_recipe(data)
    with pytest.raises(ModelscaleError, match="name: cannot be swept"):
        expand_sweeps(with_(name={"sweep": ["a", "b"]}))


def test_patch_recipe_shortens_every_training_section_and_the_measurement():
    data = with_(steps=[{"finetune": None}, {"distill": {"teacher": "baseline"}}], measure=None)
    patched = patch_recipe(data, epochs=1, max_steps=3, repeats=2, batch_sizes=[1])
    assert patched["baseline"]["train"]["epochs"] == 1 and patched["baseline"]["train"]["max_steps"] == 3
    assert patched["steps"][0]["finetune"] == {"epochs": 1, "max_steps": 3}
    assert patched["steps"][1]["distill"]["train"] == {"epochs": 1, "max_steps": 3}
    assert patched["measure"] == {"repeats": 2, "batch_sizes": [1]}
    assert data["baseline"]["train"]["epochs"] == 2  # the input is not changed


def test_export_step_validates():
    plan = load_recipe(with_(steps=[{"export": {"format": "onnx", "opset": 17}}]))
    assert plan.variants[0].steps[0].config.opset == 17
    with pytest.raises(ModelscaleError, match=r"steps\[0\]\.export\.opset: cannot read 'x' as int"):
        load_recipe(with_(steps=[{"export": {"opset": "x"}}]))


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_validate(path):
    text = path.read_text()
    assert text.startswith("#"), "each example recipe opens with a comment saying what it shows"
    data = read_recipe(path)
    if any("distill" in s for s in data.get("steps", [])):
        pytest.importorskip("modelscale.techniques.distill")
    plan = load_recipe(path)
    assert plan.variants and all(v.steps for v in plan.variants)


def test_missing_optional_parts_fail_validation_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the package were not installed
    with pytest.raises(
        ModelscaleError, match=r"steps\[0\]\.export: ONNX export is not available .*modelscale\[onnx\]"
    ):
        load_recipe(with_(steps=[{"export": {}}]))
    monkeypatch.setitem(sys.modules, "modelscale.techniques.distill", None)
    with pytest.raises(ModelscaleError, match=r"steps\[0\]\.distill: distillation is not available"):
        load_recipe(with_(steps=[{"distill": {}}]))
