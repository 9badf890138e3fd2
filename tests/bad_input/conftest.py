"""Shared fixtures of the bad-input matrix: small real sklearn data sets as npz files, two tiny trained
models, a run store with real runs, and `expect_bad`, the one assertion every case makes.

`expect_bad(argv, *fragments)` runs the CLI in-process (`modelscale.cli.main`) in an empty working
folder and asserts what the project promises for bad input: exit code 2, one line on stderr naming the
problem (each fragment, case-insensitive), no traceback, and no file written or changed (the working
folder and every path given in `watch` are compared before and after).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from modelscale.cli import main


def _load(name: str):
    from sklearn import datasets

    return {
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "digits": datasets.load_digits,
    }[name]()


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under `roots` with a hash of its content (folders: 'dir')."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha1(root.read_bytes()).hexdigest()
            continue
        if not root.exists():
            out[str(root)] = "absent"
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[p] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """npz files of real data (and of deliberately broken variants of it), text and CSV files."""
    root = tmp_path_factory.mktemp("bad_input_data")
    out: dict[str, Path] = {}

    def save(name: str, **arrays) -> None:
        out[name] = root / f"{name}.npz"
        np.savez(out[name], **arrays)

    for name in ("wine", "breast_cancer", "iris"):
        d = _load(name)
        save(name, x=d.data.astype(np.float32), y=d.target)
    digits = _load("digits")
    save("digits_images", x=digits.images[:, None].astype(np.float32) / 16, y=digits.target)
    wine = _load("wine")
    x, y = wine.data.astype(np.float32), wine.target
    nan = x.copy()
    nan[5, 3] = np.nan
    save("wine_nan", x=nan, y=y)
    inf = x.copy()
    inf[7, 0] = np.inf
    save("wine_inf", x=inf, y=y)
    save("wine_negative", x=x, y=y - 1)
    save("wine_gaps", x=x, y=np.array([0, 2, 5])[y])
    save("wine_float_labels", x=x, y=y.astype(np.float32) + 0.5)
    save("wine_one_class", x=x, y=np.zeros_like(y))
    save("wine_short_y", x=x, y=y[:-3])
    save("wine_no_y", x=x)
    save("wine_empty", x=x[:0], y=y[:0])
    save("wine_strings", x=np.array([["a"] * 13] * len(y)), y=y)
    save("wine_2d_y", x=x, y=np.stack([y, y], 1))
    out["wine_objects"] = root / "wine_objects.npz"
    np.savez(out["wine_objects"], x=np.array([{"a": 1}] * len(y), dtype=object), y=y)
    out["not_npz"] = root / "not_npz.npz"
    out["not_npz"].write_text("this is not a zip file\n")
    out["text"] = root / "corpus.txt"
    out["text"].write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(600))
    )
    out["a_file"] = root / "a_file.txt"
    out["a_file"].write_text("a plain file\n")
    return out


def _train(out: Path, data: Path, model: str = "mlp") -> Path:
    code = main(
        ["train", model, "--data", f"npz:{data}", "--out", str(out), "--epochs", "1", "--progress", "false"]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory, files) -> dict[str, Path]:
    """Tiny models trained for one epoch: an MLP on wine, an MLP on breast cancer, a CNN on digit images."""
    root = tmp_path_factory.mktemp("bad_input_models")
    return {
        "wine": _train(root / "wine_mlp", files["wine"]),
        "breast_cancer": _train(root / "bc_mlp", files["breast_cancer"]),
        "digits_cnn": _train(root / "digits_cnn", files["digits_images"], "cnn"),
    }


@pytest.fixture()
def expect_bad(tmp_path, monkeypatch, capsys):
    """Run the CLI in an empty folder; assert exit 2, one line naming the problem, no traceback, no file."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def check(argv: list[str], *fragments: str, watch: tuple[Path, ...] = ()) -> str:
        before = _snapshot(work, *watch)
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err + out
        assert code == 2, f"exit {code}, stderr: {err!r}"
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"expected one line, got: {err!r}"
        assert lines[0].startswith("modelscale"), lines[0]
        for fragment in fragments:
            assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
        assert _snapshot(work, *watch) == before, "a failed command left files behind"
        return lines[0]

    check.work = work  # type: ignore[attr-defined]
    return check


@pytest.fixture()
def run_ok(tmp_path, monkeypatch, capsys):
    """Run the CLI in an empty folder; returns (exit code, stdout, stderr)."""
    work = tmp_path / "ok"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err + out
        return code, out, err

    run.work = work  # type: ignore[attr-defined]
    return run
