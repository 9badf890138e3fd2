"""The run store: SQLite by default (WAL, safe for concurrent writers), SQLAlchemy URLs, CLI functions."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline import RunStore, runs_compare, runs_delete, runs_list, runs_show


def fill(store: RunStore, *, label: str, accuracy: float, latency: float) -> str:
    run_id, existing = store.open_run(
        recipe="demo",
        variant=label,
        label=label,
        run_dir="/tmp/r",
        config={"steps": [{"name": "p"}]},
        sweep={"a": 1},
    )
    assert existing is None
    for idx, name in enumerate(["baseline", "p"]):
        assert store.start_step(run_id, idx, name=name, kind="technique", config={"i": idx}) == 1
        acc = 0.9 if idx == 0 else accuracy
        lat = 2.0 if idx == 0 else latency
        store.finish_step(
            run_id,
            idx,
            status="completed",
            summary={"notes": ["a note"]} if idx else {},
            metrics=[
                {
                    "name": "quality.accuracy",
                    "value": acc,
                    "device": "cpu",
                    "dtype": "float32",
                    "batch_size": 1,
                },
                {
                    "name": "latency.median_ms",
                    "value": lat,
                    "device": "cpu",
                    "dtype": "float32",
                    "batch_size": 1,
                },
                {
                    "name": "params.total",
                    "value": 100.0,
                    "device": "cpu",
                    "dtype": "float32",
                    "batch_size": 1,
                },
            ],
            artifacts=[{"kind": "checkpoint", "path": f"/tmp/r/{idx}", "bytes": 10}],
            seconds=1.5,
        )
    store.finish_run(run_id, "completed")
    return run_id


def test_store_round_trip_and_cli_functions(tmp_path):
    db = tmp_path / "sub" / "runs.db"
    with RunStore(db) as store:
        a = fill(store, label="amount=0.5", accuracy=0.8, latency=1.0)
        b = fill(store, label="amount=0.8", accuracy=0.7, latency=0.5)
        assert [r["id"] for r in store.runs()] == [a, b]
        assert store.run(a[:6])["label"] == "amount=0.5"  # unique prefixes work
        assert store.run(a)["config"] == {"steps": [{"name": "p"}]}  # JSON text decoded
        steps = store.steps(a)
        assert [(s["idx"], s["status"], s["attempts"]) for s in steps] == [
            (0, "completed", 1),
            (1, "completed", 1),
        ]
        assert len(store.metrics(a)) == 6 and len(store.metrics(a, step_idx=1)) == 3
        # a second attempt of a step replaces its metrics instead of adding to them
        assert store.start_step(a, 1, name="p", kind="technique", config={}) == 2
        store.finish_step(a, 1, status="failed", error="boom", metrics=[{"name": "x", "value": 1.0}])
        assert [m["name"] for m in store.metrics(a, step_idx=1)] == ["x"]
        assert store.steps(a)[1]["error"] == "boom"

    text, data = runs_list(store=db)
    assert a in text and b in text and "amount=0.8" in text
    assert [r["id"] for r in data] == [a, b] and data[0]["steps_done"] == 1 and data[1]["steps_done"] == 2

    text, data = runs_show(b, store=db)
    assert "1-p" in text and "70.00%" in text and "a note" in text
    assert len(data["steps"]) == 2 and len(data["artifacts"]) == 2

    text, data = runs_compare([a, b], store=db)
    by_id = {d["id"]: d for d in data}
    assert by_id[b]["delta_accuracy"] == pytest.approx(0.2)
    assert by_id[b]["speedup"] == pytest.approx(4.0)
    assert by_id[a]["final_step"] == "0-baseline"  # its step 1 failed and has no accuracy
    assert "+20.00 pp" in text and "4.00×" in text

    text, data = runs_delete(a, store=db)
    assert data["deleted"] == a and "kept" in text
    with RunStore(db) as store:
        assert [r["id"] for r in store.runs()] == [b]
        assert store.metrics(a) == [] and store.steps(a) == []
        with pytest.raises(ModelscaleError, match="no run"):
            store.run(a)
        assert store.count("metrics") == 6


def test_errors_are_one_line(tmp_path):
    with RunStore(tmp_path / "r.db") as store, pytest.raises(ModelscaleError, match="no run 'nope'"):
        store.run("nope")
    with pytest.raises(ModelscaleError, match="at least one run id"):
        runs_compare([], store=tmp_path / "r.db")
    text, data = runs_list(store=tmp_path / "r.db")
    assert data == [] and "no runs" in text


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from modelscale.pipeline.store import RunStore
    location, tag, n, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = RunStore(location)
    open(os.path.join(gate, "ready-" + tag), "w").close()
    while not os.path.exists(os.path.join(gate, "go")):  # start writing together
        time.sleep(0.01)
    for i in range(n):
        run_id, _ = store.open_run(recipe=tag, variant=f"{tag}{i}", label=f"v{i}", run_dir="/d",
                                   config={"i": i}, sweep={})
        for idx in range(2):
            store.start_step(run_id, idx, name=f"s{idx}", kind="finetune", config={})
            store.finish_step(run_id, idx, status="completed",
                              metrics=[{"name": f"m{k}", "value": float(k)} for k in range(3)])
        store.finish_run(run_id, "completed")
    """
)


def _write_concurrently(location: str, gate, n: int) -> None:
    """Two writer processes, released together once both have opened the store."""
    gate.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, location, tag, str(n), str(gate)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 120
    while not all((gate / f"ready-{t}").exists() for t in "ab") and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):  # one died opening the store: stop the other
            for p in procs:
                p.kill()
            pytest.fail("a writer died opening the store: " + " | ".join(p.communicate()[1] for p in procs))
        time.sleep(0.02)
    (gate / "go").touch()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def test_two_processes_writing_at_once_lose_no_row(tmp_path):
    db = tmp_path / "runs.db"
    _write_concurrently(str(db), tmp_path / "gate", n=60)
    with RunStore(db) as store:
        assert store.count("runs") == 120
        assert store.count("steps") == 240
        assert store.count("metrics") == 720
        assert {r["status"] for r in store.runs()} == {"completed"}
        a, b = store.runs(recipe="a"), store.runs(recipe="b")
        assert len(a) == 60 and len(b) == 60
        # the two writers really overlapped in time (their rows interleave)
        assert max(r["created_at"] for r in a) > min(r["created_at"] for r in b)
        assert max(r["created_at"] for r in b) > min(r["created_at"] for r in a)
        mode = store._db.query("PRAGMA journal_mode")[0]
        assert list(mode.values()) == ["wal"]


def test_sqlalchemy_url(tmp_path):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'sa.db'}"
    with RunStore(url) as store:
        a = fill(store, label="x", accuracy=0.5, latency=1.0)
        assert store.run(a)["sweep"] == {"a": 1}
        assert len(store.metrics(a)) == 6
    # the same file read through the stdlib backend, and written by two processes through SQLAlchemy
    with RunStore(tmp_path / "sa.db") as plain:
        assert [r["id"] for r in plain.runs()] == [a]
    _write_concurrently(url, tmp_path / "gate", n=10)
    with RunStore(url) as store:
        assert store.count("runs") == 21 and store.count("metrics") == 6 + 120
    text, _ = runs_show(a, store=url)
    assert "50.00%" in text


def test_many_openers_of_a_new_store_at_once_all_get_it(tmp_path):
    """Converting a new file to WAL skips SQLite's busy handler: every opener must still succeed."""
    import threading

    for trial in range(80):
        path = tmp_path / f"new{trial}.db"
        barrier, errors = threading.Barrier(12), []

        def open_it(path=path, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                RunStore(path).close()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == [], errors
        with RunStore(path) as store:
            assert list(store._db.query("PRAGMA journal_mode")[0].values()) == ["wal"]
