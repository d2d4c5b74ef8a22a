"""Where the MLflow store is: the project root wherever DVC runs a stage, the SQLite store and
its artifact folder, the lock under which a fresh store is set up, and the relocation of a
store copied or moved with its project (see :mod:`pnoc_pipelines.tracking`)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("pnoc")

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# Where DVC 3 puts the workspaces of `dvc exp run --temp` and of queued experiments:
# <project>/.dvc/tmp/exps/tmpXXXX and <project>/.dvc/tmp/exps/standalone/tmpXXXX.
EXPERIMENT_WORKSPACES = (".dvc", "tmp", "exps")


def project_root(start: Path | None = None) -> Path:
    """The project a stage belongs to, wherever DVC runs it.

    In a DVC experiment's temporary workspace (below ``<project>/.dvc/tmp/exps/``): the project
    that owns it. Otherwise the nearest folder from ``start`` (default: the working directory)
    upwards holding a ``dvc.yaml``, else ``start`` itself.
    """
    here = (start or Path.cwd()).resolve()
    parts, marker = here.parts, EXPERIMENT_WORKSPACES
    for i in range(len(parts) - len(marker) + 1):
        if parts[i : i + len(marker)] == marker:
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return here


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute or relative as written), else None."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set (a relative SQLite path taken from the project root), else
    a SQLite store ``mlflow.db`` at the project root (:func:`project_root` of ``root``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root(root) / STORE_FILE}"
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{project_root(root) / path}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``<db>.lock`` beside a SQLite store (no-op for
    other stores), creating the database's folder if needed."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Columns of MLflow's SQL schema that hold artifact locations.
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def relocate_artifacts(db: Path) -> int:
    """Point a SQLite store that was copied or moved with its ``mlartifacts/`` at the copy.

    MLflow records artifact locations as absolute paths, so a copied project would read (and
    write) the original's artifacts, and a moved one would find none. When the store's
    experiments keep their artifacts in an ``mlartifacts/`` folder other than the one beside
    ``db``, and that one exists (or the recorded one is gone), every recorded path under the
    old folder is rewritten to the new one. Returns the number of rows changed.
    """
    import sqlite3

    here = (db.resolve().parent / ARTIFACTS_DIR).as_posix()
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
        except sqlite3.Error:  # not (yet) an MLflow store
            return 0
        old_roots = set()
        for (location,) in rows:
            path = str(location or "").removeprefix("file://")
            marker = "/" + ARTIFACTS_DIR
            if marker in path:
                root = path[: path.index(marker) + len(marker)]
                if root != here and (Path(here).is_dir() or not Path(root).exists()):
                    old_roots.add(root)
        for old in old_roots:
            for table, column in _ARTIFACT_COLUMNS:
                with contextlib.suppress(sqlite3.OperationalError):  # older schema
                    cur = con.execute(
                        f"UPDATE {table} SET {column} = replace({column}, ?, ?) "
                        f"WHERE instr({column}, ?) > 0",
                        (old, here, old),
                    )
                    changed += cur.rowcount
        con.commit()
    if changed:
        log.info("MLflow store %s: artifact paths moved to %s (%d rows)", db, here, changed)
    return changed
