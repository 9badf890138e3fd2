"""`runs`, `report`: run ids match literally, bad stores are one line, reading never creates files."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from modelscale.cli import main


@pytest.fixture(scope="session")
def store(tmp_path_factory, files):
    """A run store holding two real runs (a two-variant sweep of a one-epoch MLP on wine)."""
    root = tmp_path_factory.mktemp("bad_input_store")
    body = {
        "version": 1,
        "name": "two",
        "model": {"name": "mlp"},
        "data": {"source": f"npz:{files['wine']}"},
        "baseline": {"train": {"epochs": 1, "lr": {"sweep": [0.001, 0.002]}, "progress": False}},
        "measure": {"metrics": ["params"]},
    }
    path = root / "two.yaml"
    path.write_text(yaml.safe_dump(body))
    db = root / "store.db"
    assert main(["run", str(path), "--store", str(db), "--run-dir", str(root / "runs")]) == 0
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id")]
    assert len(ids) == 2
    return db, ids


def _run_count(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@pytest.mark.parametrize("pattern", ["_", "%", "_%", "[", "*"])
@pytest.mark.parametrize("action", ["show", "delete"])
def test_wildcards_match_literally(expect_bad, store, action, pattern):
    db, ids = store
    expect_bad(["runs", action, pattern, "--store", db], "no run", watch=(db,))
    assert _run_count(db) == 2


def test_delete_prefix_of_several(expect_bad, store):
    db, ids = store
    expect_bad(["runs", "delete", "", "--store", db], "run id", watch=(db,))
    assert _run_count(db) == 2


def test_delete_several_ids_needs_yes(expect_bad, store):
    db, ids = store
    expect_bad(["runs", "delete", *ids, "--store", db], "--yes", watch=(db,))
    assert _run_count(db) == 2


def test_show_unknown(expect_bad, store):
    db, _ = store
    expect_bad(["runs", "show", "ffffffffffff", "--store", db], "no run", watch=(db,))


def test_show_two_ids(expect_bad, store):
    db, ids = store
    expect_bad(["runs", "show", *ids, "--store", db], "one run id", watch=(db,))


def test_compare_unknown(expect_bad, store):
    db, _ = store
    expect_bad(["runs", "compare", "ffffffffffff", "--store", db], "no run", watch=(db,))


@pytest.mark.parametrize("action", ["list", "show"])
def test_store_not_sqlite(expect_bad, tmp_path, action):
    bad = tmp_path / "notes.db"
    bad.write_text("hello\n" * 50)
    expect_bad(
        ["runs", action, *(["abc"] if action == "show" else []), "--store", bad], "store", watch=(bad,)
    )


def test_store_is_a_directory(expect_bad, tmp_path):
    (tmp_path / "d").mkdir()
    expect_bad(["runs", "list", "--store", tmp_path / "d"], "store")


def test_store_missing_show(expect_bad, tmp_path):
    expect_bad(
        ["runs", "show", "abc", "--store", tmp_path / "missing.db"],
        "no run store",
        watch=(tmp_path / "missing.db",),
    )


def test_corrupt_row(expect_bad, store, tmp_path):
    import shutil

    db, ids = store
    copy = tmp_path / "corrupt.db"
    shutil.copy(db, copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE runs SET config = '{broken' WHERE id = ?", (ids[0],))
    expect_bad(["runs", "show", ids[0], "--store", copy], "corrupt", watch=(copy,))


def test_runs_list_missing_store_creates_nothing(run_ok, tmp_path):
    code, out, err = run_ok(["runs", "list", "--store", tmp_path / "missing.db"])
    assert code == 0 and "no run" in out.lower()
    assert not (tmp_path / "missing.db").exists()
    code, out, err = run_ok(["runs", "list"])  # the default store, runs/modelscale.db
    assert code == 0 and not (run_ok.work / "runs").exists()


def test_runs_list_json_is_strict(run_ok, store):
    db, ids = store
    code, out, _ = run_ok(["runs", "list", "--store", db, "--json"])
    assert code == 0 and {r["id"] for r in json.loads(out)} == set(ids)


def test_delete_exact_id_deletes_only_it(run_ok, store, tmp_path):
    import shutil

    db, ids = store
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    code, out, err = run_ok(["runs", "delete", ids[0], "--store", copy])
    assert code == 0, err
    assert _run_count(copy) == 1


# --- report -----------------------------------------------------------------------------------------
def test_report_missing_store(expect_bad, tmp_path):
    expect_bad(
        ["report", "abc", "--store", tmp_path / "missing.db"],
        "no run store",
        watch=(tmp_path / "missing.db",),
    )


def test_report_default_store_missing(expect_bad):
    expect_bad(["report", "abc"], "no run store")


def test_report_wildcard(expect_bad, store):
    db, _ = store
    expect_bad(["report", "%", "--store", db], "no run", watch=(db,))


def test_report_out_is_a_file(expect_bad, store):
    db, ids = store
    (expect_bad.work / "taken").write_text("mine\n")
    expect_bad(["report", ids[0], "--store", db, "--out", "taken"], "--out", watch=(db,))
