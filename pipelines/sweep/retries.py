"""Retries on SQLite's transient lock errors, for the driver's MLflow calls.

Only the driver writes to the MLflow store, but another process (``mlflow ui``, a pipeline
stage, a second sweep) may hold the SQLite lock for a moment: ``database is locked`` is retried
with backoff instead of dropping data.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("pnoc.sweep")
T = TypeVar("T")

_LOCK_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def is_lock_error(exc: BaseException) -> bool:
    """True for SQLite's transient lock errors, however wrapped (sqlite3, SQLAlchemy, MLflow)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if any(m in text for m in _LOCK_MESSAGES):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def with_retries(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 12,
    first_delay: float = 0.05,
    max_delay: float = 5.0,
    **kwargs: Any,
) -> T:
    """Call ``fn``; on a SQLite lock error wait (exponential backoff, jitter) and call again.

    Other errors, and the last lock error after ``attempts`` tries (~25 s), propagate.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not is_lock_error(exc):
                raise
            delay = min(max_delay, first_delay * 2**attempt) * (1.0 + random.random())
            log.debug("MLflow store locked (%s); retry %d in %.2fs", exc, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
