"""The folder the ``prepare`` stage writes derived dataset files to, and its manifest.

DVC forbids an output inside a dependency, and the raw dataset folder (``data.root``) is one, so
what is derived from it (VOC's ``SegmentationClassAug`` built from SBD, COCO's class masks and
labels) goes to a separate folder, :data:`PREPARED_ROOT` by default::

    manifest.json                          what the folder was prepared from, and whether fully
    SegmentationClassAug/<id>.png          VOC-layout data with SBD (pnoc.data.prepare_voc)
    ImageSets/SegmentationAug/train_aug.txt
    masks/<split>2014/<id>.png             COCO 2014 (pnoc.data.prepare_coco)
    labels/<split>2014.json

``manifest.json`` names the dataset (``data.name``) and root it was prepared from, whether the
preparation finished (``complete``), and ``sources``: a stamp (the md5 of the file it came from)
per part that a later run may keep and resume. Readers use the folder only when its manifest is
complete and names the dataset they open (:func:`prepared_folder`), so a folder prepared from
other data is never read by mistake.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pnoc.errors import DatasetError
from pnoc.io import write_json

log = logging.getLogger(__name__)

#: The ``prepare`` stage's output folder, relative to the project root (a DVC output).
PREPARED_ROOT = Path("data/prepared")
MANIFEST = "manifest.json"
FORMAT = 1

T = TypeVar("T")
R = TypeVar("R")


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` when it has none (or an unreadable one)."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _same_source(manifest: Mapping[str, Any], dataset: str, root: str | Path) -> bool:
    try:
        return manifest.get("dataset") == dataset and (
            Path(str(manifest.get("root"))).resolve() == Path(root).resolve()
        )
    except OSError:
        return False


def prepared_folder(folder: str | Path | None, dataset: str, root: str | Path) -> Path | None:
    """``folder`` when it holds a complete preparation of ``dataset`` at ``root``, else None.

    A folder prepared from other data (or a preparation that did not finish) is ignored with a
    warning: the readers then use ``root`` alone.
    """
    if folder is None or not Path(folder).is_dir():
        return None
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    if not _same_source(manifest, dataset, root):
        log.warning(
            "%s was prepared from %s at %s, not %s at %s: ignored (run the prepare stage)",
            folder,
            manifest.get("dataset"),
            manifest.get("root"),
            dataset,
            root,
        )
        return None
    if not manifest.get("complete"):
        log.warning("%s: its preparation did not finish: ignored (rerun the prepare stage)", folder)
        return None
    return Path(folder)


def begin(
    folder: str | Path,
    dataset: str,
    root: str | Path,
    sources: Mapping[str, str] | None = None,
) -> list[str]:
    """Start (or resume) preparing ``dataset`` at ``root`` into ``folder``; return what is kept.

    ``sources`` maps the relative paths of parts that may be resumed to a stamp of what they are
    made from. A part is kept when the folder's manifest names the same dataset and root and the
    same stamp for it; everything else in the folder is removed, and an incomplete manifest is
    written, so that readers ignore the folder until :func:`finish`.
    """
    folder = Path(folder)
    sources = dict(sources or {})
    old = read_manifest(folder)
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if entries and old is None:
        raise DatasetError(
            folder,
            f"holds files but no readable {MANIFEST}: it is the prepare stage's output folder, "
            "which the stage rewrites; move its contents elsewhere or remove it",
        )
    keep: list[str] = []
    if old is not None and _same_source(old, dataset, root):
        old_sources = old.get("sources") or {}
        keep = [rel for rel, stamp in sources.items() if old_sources.get(rel) == stamp]
    _remove_all_but(folder, [Path(k) for k in keep])
    write_json(
        folder / MANIFEST,
        {
            "format": FORMAT,
            "dataset": dataset,
            "root": str(root),
            "complete": False,
            "sources": sources,
        },  # fmt: skip
    )
    return keep


def finish(
    folder: str | Path,
    dataset: str,
    root: str | Path,
    sources: Mapping[str, str] | None,
    contents: Mapping[str, Any],
) -> None:
    """Mark the preparation complete; ``contents`` (deterministic figures) go in the manifest."""
    write_json(
        Path(folder) / MANIFEST,
        {
            "format": FORMAT,
            "dataset": dataset,
            "root": str(root),
            "complete": True,
            "sources": dict(sources or {}),
            "contents": dict(contents),
        },  # fmt: skip
    )


def _remove_all_but(folder: Path, keep: list[Path]) -> None:
    """Delete everything under ``folder`` except the paths (relative) in ``keep`` and their
    parents' other kept children."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        rel = entry.relative_to(folder)
        if any(k == rel for k in keep):
            continue
        inner = [k.relative_to(rel) for k in keep if rel in k.parents]
        if inner and entry.is_dir() and not entry.is_symlink():
            _remove_all_but(entry, inner)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def remove_temporaries(folder: Path) -> int:
    """Delete the ``.<name>.<random>.tmp`` files a killed atomic write left in ``folder``."""
    removed = 0
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def default_workers() -> int:
    """Worker processes for a preparation: ``PNOC_PREPARE_WORKERS``, else the usable CPUs
    (at most 8). The figure changes how fast, never what, so it is not a DVC param."""
    env = os.environ.get("PNOC_PREPARE_WORKERS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("PNOC_PREPARE_WORKERS=%r is not an integer: ignored", env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def parallel_map(
    fn: Callable[[T], R], tasks: Iterable[T], num_workers: int, *, chunks_per_worker: int = 16
) -> list[R]:
    """``[fn(t) for t in tasks]``, in a pool of ``num_workers`` processes when above 1.

    The first exception a task raises (a :class:`DatasetError` naming its file) is raised here;
    the pool is shut down, pending tasks cancelled.
    """
    tasks = list(tasks)
    if num_workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    chunksize = max(1, len(tasks) // (num_workers * chunks_per_worker))
    with ProcessPoolExecutor(max_workers=num_workers) as pool:
        try:
            return list(pool.map(fn, tasks, chunksize=chunksize))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
