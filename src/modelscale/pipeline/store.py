"""The run store: every run, step, metric and artifact of the recipe runner, in one SQL database.

By default a single SQLite file (`runs/modelscale.db`) through the standard library's `sqlite3`, in
WAL mode with a busy timeout and `BEGIN IMMEDIATE` write transactions, so several processes can
write at once without losing rows. Any SQLAlchemy URL (`postgresql://...`, `sqlite:///x.db`) works
when SQLAlchemy is installed (imported only then). The SQL is kept portable: client-made text ids,
no autoincrement, no upserts, `DOUBLE PRECISION`/`BIGINT` types, named `:parameters`.

Tables: runs (one per recipe variant; its validated config as JSON text), steps (one per executed
step: status, timestamps, attempts, error), metrics (one number per row, tagged with device, dtype
and batch size), artifacts (files a step wrote: checkpoints, ONNX, profiles).

Example::

    store = RunStore("runs/modelscale.db")
    for run in store.runs(): print(run["id"], run["recipe"], run["status"])
    store.metrics(run_id, step_idx=2)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modelscale.core.errors import ModelscaleError
from modelscale.pipeline.store_backends import SqlAlchemy, Sqlite

DEFAULT_STORE = "runs/modelscale.db"
SCHEMA_VERSION = 1

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS store_meta (name VARCHAR(64) PRIMARY KEY, content TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        id VARCHAR(32) PRIMARY KEY, recipe VARCHAR(200) NOT NULL, variant VARCHAR(200) NOT NULL,
        label TEXT NOT NULL, run_dir TEXT NOT NULL, status VARCHAR(16) NOT NULL, config TEXT NOT NULL,
        sweep TEXT NOT NULL, error TEXT, created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS runs_dir_variant ON runs (run_dir, variant)",
    """CREATE TABLE IF NOT EXISTS steps (
        run_id VARCHAR(32) NOT NULL, idx INTEGER NOT NULL, name VARCHAR(200) NOT NULL,
        kind VARCHAR(32) NOT NULL, status VARCHAR(16) NOT NULL, config TEXT NOT NULL, summary TEXT,
        error TEXT, attempts INTEGER NOT NULL, started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION,
        seconds DOUBLE PRECISION, checkpoint TEXT, reused_from TEXT, PRIMARY KEY (run_id, idx))""",
    """CREATE TABLE IF NOT EXISTS metrics (
        id VARCHAR(32) PRIMARY KEY, run_id VARCHAR(32) NOT NULL, step_idx INTEGER NOT NULL,
        name VARCHAR(200) NOT NULL, value DOUBLE PRECISION, device VARCHAR(32), dtype VARCHAR(32),
        batch_size INTEGER)""",
    "CREATE INDEX IF NOT EXISTS metrics_run_step ON metrics (run_id, step_idx)",
    """CREATE TABLE IF NOT EXISTS artifacts (
        id VARCHAR(32) PRIMARY KEY, run_id VARCHAR(32) NOT NULL, step_idx INTEGER NOT NULL,
        kind VARCHAR(32) NOT NULL, path TEXT NOT NULL, bytes BIGINT, created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts (run_id)",
)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class RunStore:
    """Records of recipe runs. `location`: a file path (SQLite) or an SQLAlchemy URL."""

    def __init__(self, location: str | Path = DEFAULT_STORE, *, create: bool = True) -> None:
        """`create=False` (readers: runs list/show, report) never makes a store that is not there."""
        import sqlite3

        self.location = str(location)
        if "://" in self.location:
            self._db: Any = SqlAlchemy(self.location)
            self._create()
            return
        path = Path(self.location)
        if path.is_dir():
            raise ModelscaleError(f"run store {path} is a folder; give a file, e.g. {path / 'modelscale.db'}")
        if not create and not path.is_file():
            raise ModelscaleError(
                f"no run store at {path}; run a recipe first (modelscale run RECIPE) or give --store"
            )
        try:
            self._db = Sqlite(path)
            self._create()
        except sqlite3.Error as exc:
            if getattr(self, "_db", None) is not None:
                self._db.close()
            raise ModelscaleError(
                f"cannot use run store {path} ({exc}); give a run store made by modelscale or a new file path"
            ) from None
        except OSError as exc:
            raise ModelscaleError(
                f"cannot open run store {path} ({exc.strerror or exc}); give a writable file path"
            ) from None

    def __repr__(self) -> str:
        return f"RunStore({self.location!r})"

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _create(self) -> None:
        with self._db.transaction() as run:
            for statement in SCHEMA:
                run(statement)
            have = self._db_query_in(run, "SELECT content FROM store_meta WHERE name = 'schema_version'")
            if not have:
                run(
                    "INSERT INTO store_meta (name, content) VALUES ('schema_version', :v)",
                    {"v": str(SCHEMA_VERSION)},
                )
            elif int(have[0][0]) > SCHEMA_VERSION:
                raise ModelscaleError(
                    f"run store {self.location} has schema {have[0][0]}, newer than this modelscale "
                    f"({SCHEMA_VERSION}); upgrade modelscale"
                )

    @staticmethod
    def _db_query_in(run: Any, sql: str) -> list[Any]:
        return list(run(sql).fetchall())

    # --- writes used by the runner ----------------------------------------------------------------
    def open_run(
        self,
        *,
        recipe: str,
        variant: str,
        label: str,
        run_dir: str,
        config: dict[str, Any],
        sweep: dict[str, Any],
        resume: bool = True,
    ) -> tuple[str, dict[str, Any] | None]:
        """The id of the run of (run_dir, variant): the existing one when resuming, else a new one.
        Also returns the existing row (None when new) so the caller can check the config matches."""
        now = time.time()
        with self._db.transaction() as run:
            rows = run(
                "SELECT id, config FROM runs WHERE run_dir = :d AND variant = :v ORDER BY created_at DESC",
                {"d": run_dir, "v": variant},
            ).fetchall()
            if rows and resume:
                run_id = rows[0][0]
                run(
                    "UPDATE runs SET status = 'running', error = NULL, updated_at = :t, finished_at = NULL, "
                    "config = :config, sweep = :sweep, label = :label WHERE id = :id",
                    {
                        "t": now,
                        "id": run_id,
                        "config": json.dumps(config),
                        "sweep": json.dumps(sweep),
                        "label": label,
                    },
                )
                return run_id, {"id": run_id, "config": json.loads(rows[0][1])}
            run_id = new_id()
            run(
                "INSERT INTO runs (id, recipe, variant, label, run_dir, status, config, sweep, error, "
                "created_at, updated_at, finished_at) VALUES (:id, :recipe, :variant, :label, :run_dir, "
                "'running', :config, :sweep, NULL, :t, :t, NULL)",
                {
                    "id": run_id,
                    "recipe": recipe,
                    "variant": variant,
                    "label": label,
                    "run_dir": run_dir,
                    "config": json.dumps(config),
                    "sweep": json.dumps(sweep),
                    "t": now,
                },
            )
        return run_id, None

    def start_step(self, run_id: str, idx: int, *, name: str, kind: str, config: dict[str, Any]) -> int:
        """Mark step `idx` running (a new attempt); returns how many times it has been started."""
        now = time.time()
        with self._db.transaction() as run:
            row = run(
                "SELECT attempts FROM steps WHERE run_id = :r AND idx = :i", {"r": run_id, "i": idx}
            ).fetchone()
            attempts = (int(row[0]) if row else 0) + 1
            params = {
                "r": run_id,
                "i": idx,
                "n": name,
                "k": kind,
                "c": json.dumps(config),
                "a": attempts,
                "t": now,
            }
            if row:
                run(
                    "UPDATE steps SET name = :n, kind = :k, status = 'running', config = :c, summary = NULL, "
                    "error = NULL, attempts = :a, started_at = :t, finished_at = NULL, seconds = NULL, "
                    "checkpoint = NULL, reused_from = NULL WHERE run_id = :r AND idx = :i",
                    params,
                )
            else:
                run(
                    "INSERT INTO steps (run_id, idx, name, kind, status, config, attempts, started_at) "
                    "VALUES (:r, :i, :n, :k, 'running', :c, :a, :t)",
                    params,
                )
            run("UPDATE runs SET updated_at = :t WHERE id = :r", {"t": now, "r": run_id})
        return attempts

    def finish_step(
        self,
        run_id: str,
        idx: int,
        *,
        status: str,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
        metrics: Iterable[dict[str, Any]] = (),
        artifacts: Iterable[dict[str, Any]] = (),
        checkpoint: str | None = None,
        reused_from: str | None = None,
        seconds: float | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Record a step's outcome with its metrics and artifacts, in one transaction."""
        now = time.time()
        with self._db.transaction() as run:
            run(
                "UPDATE steps SET status = :s, summary = :su, error = :e, finished_at = :f, seconds = :sec, "
                "checkpoint = :c, reused_from = :ru WHERE run_id = :r AND idx = :i",
                {
                    "s": status,
                    "su": json.dumps(summary) if summary is not None else None,
                    "e": error,
                    "f": finished_at or now,
                    "sec": seconds,
                    "c": checkpoint,
                    "ru": reused_from,
                    "r": run_id,
                    "i": idx,
                },
            )
            run("DELETE FROM metrics WHERE run_id = :r AND step_idx = :i", {"r": run_id, "i": idx})
            run("DELETE FROM artifacts WHERE run_id = :r AND step_idx = :i", {"r": run_id, "i": idx})
            for m in metrics:
                run(
                    "INSERT INTO metrics (id, run_id, step_idx, name, value, device, dtype, batch_size) "
                    "VALUES (:id, :r, :i, :n, :v, :d, :dt, :b)",
                    {
                        "id": new_id() + new_id(),
                        "r": run_id,
                        "i": idx,
                        "n": m["name"],
                        "v": m.get("value"),
                        "d": m.get("device"),
                        "dt": m.get("dtype"),
                        "b": m.get("batch_size"),
                    },
                )
            for a in artifacts:
                run(
                    "INSERT INTO artifacts (id, run_id, step_idx, kind, path, bytes, created_at) "
                    "VALUES (:id, :r, :i, :k, :p, :b, :t)",
                    {
                        "id": new_id() + new_id(),
                        "r": run_id,
                        "i": idx,
                        "k": a["kind"],
                        "p": a["path"],
                        "b": a.get("bytes"),
                        "t": now,
                    },
                )
            run("UPDATE runs SET updated_at = :t WHERE id = :r", {"t": now, "r": run_id})

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        now = time.time()
        with self._db.transaction() as run:
            run(
                "UPDATE runs SET status = :s, error = :e, updated_at = :t, finished_at = :t WHERE id = :r",
                {"s": status, "e": error, "t": now, "r": run_id},
            )

    def delete_run(self, run_id: str) -> dict[str, Any]:
        """Delete a run's records (not its files); returns the deleted run row."""
        row = self.run(run_id)
        with self._db.transaction() as run:
            for table, col in (
                ("metrics", "run_id"),
                ("artifacts", "run_id"),
                ("steps", "run_id"),
                ("runs", "id"),
            ):
                run(f"DELETE FROM {table} WHERE {col} = :r", {"r": row["id"]})
        return row

    # --- reads --------------------------------------------------------------------------------------
    def runs(self, *, recipe: str | None = None, run_dir: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM runs", {}
        where = []
        if recipe is not None:
            where.append("recipe = :recipe")
            params["recipe"] = recipe
        if run_dir is not None:
            where.append("run_dir = :run_dir")
            params["run_dir"] = run_dir
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_decode(r) for r in self._db.query(sql + " ORDER BY created_at, id", params)]

    def run(self, run_id: str) -> dict[str, Any]:
        """One run by id or unique id prefix."""
        if not isinstance(run_id, str) or not run_id:
            raise ModelscaleError("give a run id (see `modelscale runs list`)")
        # a literal prefix: no LIKE, so '_' and '%' in what the user typed match only themselves
        rows = self._db.query(
            "SELECT * FROM runs WHERE substr(id, 1, :n) = :p ORDER BY id", {"n": len(run_id), "p": run_id}
        )
        exact = [r for r in rows if r["id"] == run_id]
        if exact:
            rows = exact
        if not rows:
            raise ModelscaleError(f"no run {run_id!r} in {self.location}; see `modelscale runs list`")
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows[:10])
            raise ModelscaleError(f"run id {run_id!r} is ambiguous ({ids}); give more characters")
        return _decode(rows[0])

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._db.query("SELECT * FROM steps WHERE run_id = :r ORDER BY idx", {"r": run_id})
        return [_decode(r) for r in rows]

    def metrics(self, run_id: str, step_idx: int | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM metrics WHERE run_id = :r", {"r": run_id}
        if step_idx is not None:
            sql += " AND step_idx = :i"
            params["i"] = step_idx
        return self._db.query(sql + " ORDER BY step_idx, name, device, dtype, batch_size", params)

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self._db.query(
            "SELECT * FROM artifacts WHERE run_id = :r ORDER BY step_idx, kind", {"r": run_id}
        )

    def count(self, table: str) -> int:
        if table not in ("runs", "steps", "metrics", "artifacts"):
            raise ModelscaleError(f"unknown table {table!r}; valid: runs, steps, metrics, artifacts")
        return int(self._db.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """Parse the JSON text columns of a row."""
    out = dict(row)
    for key in ("config", "sweep", "summary"):
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except ValueError:
                what = out.get("id") or out.get("run_id")
                raise ModelscaleError(
                    f"the run store holds a corrupt row (the {key} of run {what} is not JSON); "
                    f"delete that run (modelscale runs delete {what}) or restore the store from a copy"
                ) from None
    return out


HEADLINE = (
    "quality.accuracy",
    "quality.bits_per_byte",
    "params.total",
    "params.nonzero",
    "size.file_bytes",
    "size.zipped_bytes",
    "macs.macs",
    "latency.median_ms",
)


def headline(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """The first value of each number a summary line shows (first device/dtype/batch size)."""
    out: dict[str, float] = {}
    for row in rows:
        if row["name"] in HEADLINE and row["name"] not in out and row.get("value") is not None:
            out[row["name"]] = row["value"]
    return out


def open_store(store: RunStore | str | Path | None = None, *, create: bool = True) -> RunStore:
    """A RunStore from an instance, a path or URL, or None (the default `runs/modelscale.db`)."""
    if isinstance(store, RunStore):
        return store
    return RunStore(DEFAULT_STORE if store is None else store, create=create)
