"""``pnoc serve``: MLflow's scoring server for a verified model, behind a request guard.

The application is MLflow's own (``mlflow.pyfunc.scoring_server.init``: ``/invocations``,
``/ping``, ``/health``, ``/version``, the same payloads and answers as ``mlflow models serve``)
run by uvicorn, wrapped in :class:`RequestGuard`, which bounds what no model code can see:

- the body is read up to ``max_body_bytes`` (413 beyond, judged from ``Content-Length`` first);
- at most ``max_concurrent`` requests are parsed, segmented and answered at once; the others
  wait up to ``timeout_s`` for a slot and are then refused with 429; the deadline counts from
  the request's arrival, so one that got its slot late stops its work early (504);
- every error answer is one JSON line ``{"error_code": ..., "message": ...}`` of at most
  ``MAX_MESSAGE`` characters, never an echo of the payload or a stack trace; JSON nested too
  deep for the parser is a 400; a 5xx means a fault of the server, logged on its side.

Before starting, the model is downloaded and checked (:func:`~.registry.fetch_verified`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pnoc.errors import PnocError
from pnoc.serving import ServingLimits
from pnoc.serving.limits import MLFLOW_TIMEOUT_ENV
from pnoc_pipelines.serving.model import REQUEST_DEADLINE

log = logging.getLogger("pnoc.serve")
MODEL_PATH_ENV = "PNOC_SERVE_MODEL_PATH"
#: Longest error message answered, in characters.
MAX_MESSAGE = 300
_STATUS_CODES = {
    400: "BAD_REQUEST",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "BAD_REQUEST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    504: "DEADLINE_EXCEEDED",
}

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message as one short line: MLflow's ``Failed to ... data '<payload>' ...
    Error: <reason>`` wrappers reduced to the reason, long quoted values elided."""
    message = message.split("\nInput:", 1)[0]  # MLflow appends the raw body after this
    if message.startswith("Failed to ") and "Error: " in message:
        message = message.rsplit("Error: ", 1)[1]
    message = re.sub(r"'[^']{60,}'", "'…'", message, flags=re.S)
    message = re.sub(r'"[^"]{60,}"', '"…"', message, flags=re.S)
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def error_body(status: int, message: str, error_code: str | None = None) -> bytes:
    code = error_code or _STATUS_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "")
    return json.dumps({"error_code": code or "BAD_REQUEST", "message": one_line(message)}).encode()


class RequestGuard:
    """ASGI middleware bounding ``POST /invocations`` (see the module docstring)."""

    def __init__(self, app: Any, limits: ServingLimits) -> None:
        self.app = app
        self.limits = limits
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/invocations":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        deadline = time.monotonic() + self.limits.timeout_s
        REQUEST_DEADLINE.set(deadline)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.limits.timeout_s)
        except TimeoutError:
            await _answer(
                send,
                429,
                f"server busy: {self.limits.max_concurrent} request(s) in progress for "
                f"{self.limits.timeout_s:g} s; retry later",
            )
            return
        try:
            await self._forward(scope, body, send)
        finally:
            self._slots.release()

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        limit = self.limits.max_body_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _answer(send, 413, f"request body of {int(declared)} bytes; the limit is {limit}")
            return None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                await _answer(send, 413, f"request body over the limit of {limit} bytes")
                return None
            if not message.get("more_body", False):
                return bytes(body)

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no more body: wait to be cancelled
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        error: dict[str, Any] = {}

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                error.update(status=message["status"], body=bytearray())
                return
            if error and message["type"] == "http.response.body":
                error["body"] += message.get("body", b"")
                return
            await send(message)

        try:
            await self.app(scope, replay, guarded_send)
        except RecursionError:
            await _answer(send, 400, "JSON nested too deeply to parse")
            return
        except Exception:
            log.exception("POST /invocations failed")
            await _answer(send, 500, "internal error of the scoring server (logged on the server)")
            return
        if error:
            await _answer_error(send, error["status"], bytes(error["body"]))


async def _answer_error(send: Send, status: int, raw: bytes) -> None:
    """Re-emit an error answer of the application as one line, without a stack trace."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        message, code = str(data.get("message", "")), data.get("error_code")
    else:
        message, code = raw.decode("utf-8", "replace"), None
    if status >= 500 and status != 504:
        log.error("POST /invocations answered %s: %s", status, message)
        message = "internal error of the scoring server (logged on the server)"
    code = code if isinstance(code, str) else None
    await _answer(send, status, message or f"HTTP {status}", code)


async def _answer(send: Send, status: int, message: str, error_code: str | None = None) -> None:
    body = error_body(status, message, error_code)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_app() -> RequestGuard:
    """uvicorn's application factory: the model at ``$PNOC_SERVE_MODEL_PATH`` (already
    verified), MLflow's scoring app, the guard."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    limits = ServingLimits.from_env()
    model = mlflow.pyfunc.load_model(os.environ[MODEL_PATH_ENV])
    return RequestGuard(scoring_server.init(model), limits)


def serve(model_uri: str, *, host: str, port: int, workers: int = 1, limits: ServingLimits) -> None:
    """Verify ``model_uri``, then serve it until interrupted (blocks)."""
    import uvicorn

    from pnoc_pipelines.serving.registry import fetch_verified

    tmp = Path(tempfile.mkdtemp(prefix="pnoc-serve-"))
    try:
        local = fetch_verified(model_uri, tmp)
        os.environ.update(limits.as_env())
        # MLflow's own deadline stays behind ours, so the model's answer is the one given.
        os.environ[MLFLOW_TIMEOUT_ENV] = str(int(limits.timeout_s) + 10)
        os.environ[MODEL_PATH_ENV] = str(local)
        print(f"serving {model_uri} at http://{host}:{port}/invocations", flush=True)
        uvicorn.run(
            "pnoc_pipelines.serving.server:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# A server for tests and benchmarks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, payload: Any, timeout: float = 120) -> tuple[int, Any]:
    """POST JSON; (HTTP status, decoded JSON body, or the text when it is not JSON)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url, body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


class Server:
    """A running scoring server: its base URL and its process (for memory readings)."""

    def __init__(self, url: str, proc: subprocess.Popen) -> None:
        self.url = url
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None


class PeakRss:
    """Peak resident memory of a process and its children, sampled every 20 ms in a thread
    while the ``with`` block runs; :meth:`rss` reads it once."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:  # the process is gone
                return
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def scoring_server(
    model_uri: str,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 180,
    command: str = "pnoc",
    options: tuple[str, ...] = (),
) -> Iterator[Server]:
    """Run ``pnoc serve`` (``command="mlflow"``: ``mlflow models serve --env-manager local``,
    one worker) and yield it once ``/ping`` answers; the process group is stopped on exit."""
    port = port or free_port()
    run_env = dict(os.environ if env is None else env)
    if command == "pnoc":
        cmd = [sys.executable, "-m", "pnoc_pipelines.cli", "serve", "-m", model_uri]
        cmd += ["--host", host, "--port", str(port), *options]
    else:
        bindir = str(Path(sys.executable).parent)
        run_env["PATH"] = bindir + os.pathsep + run_env.get("PATH", "")  # MLflow runs `uvicorn`
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
        cmd += ["--env-manager", "local", "-h", host, "-p", str(port), "-w", "1", *options]
    url = f"http://{host}:{port}"
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    tail = out.read()[-3000:]
                    state = "exited" if proc.poll() is not None else "did not answer /ping"
                    raise PnocError(f"{' '.join(cmd[2:5])} {model_uri} {state}:\n{tail}")
                try:
                    with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.25)
            yield Server(url, proc)
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (uvicorn may run children), then kill it if needed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue
