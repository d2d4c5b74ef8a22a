"""`dvc push` / `dvc pull` against a real S3 server (SeaweedFS on 127.0.0.1).

The messages asserted on are DVC's own (3.x, s3fs/botocore underneath):
- server gone: ``Could not connect to the endpoint URL: "http://127.0.0.1:<port>/..."``; mid-push
  ``ERROR: failed to push data to the cloud - N files failed to upload``;
- wrong credentials: ``Forbidden: An error occurred (403) when calling the HeadObject
  operation`` (a HEAD answer has no body, so S3's error code only reaches boto3 callers of
  other operations: ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.storage.conftest import ACCESS_KEY, OUTPUTS, SECRET_KEY

pytestmark = pytest.mark.slow


def output_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the DVC outputs, by path relative to ``root``."""
    hashes = {}
    for out in OUTPUTS:
        path = root / out
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            hashes[file.relative_to(root).as_posix()] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return hashes


def remove_data(root: Path) -> None:
    """Delete the local cache and every output: only dvc.lock remembers them."""
    shutil.rmtree(root / ".dvc" / "cache")
    for out in OUTPUTS:
        path = root / out
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def remote_keys(server, prefix: str) -> list[str]:
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="pnoc-dvc", Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


# the ``cache: false`` outputs of the stages `dvc_source` ran
UNCACHED = ("metrics/dataset.json", "reports/dataset_details.json", "plots/train_oc_history.csv")


def cache_files(root: Path) -> set[str]:
    """The objects `dvc push` sends: the local cache's ``files/md5/ab/cdef…``, less the run
    cache and the copies of the uncached outputs (``cache: false`` outputs stay local)."""
    cache = root / ".dvc" / "cache"
    objects = {p.relative_to(cache).as_posix() for p in (cache / "files").rglob("*") if p.is_file()}
    return objects - {md5_key(root / out) for out in UNCACHED}


def md5_key(path: Path) -> str:
    """Where DVC stores ``path`` in the remote, below its URL."""
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return f"files/md5/{md5[:2]}/{md5[2:]}"


# the stages `dvc_source` ran; the others have no outputs to pull yet
STAGES = ("check_params", "generate", "prepare", "train_oc")


def add_remote(project, url: str, endpoint: str) -> None:
    project.dvc("remote", "add", "-d", "storage", url)
    project.dvc("remote", "modify", "storage", "endpointurl", endpoint)


def test_push_then_pull_restores_identical_files(s3_server, dvc_source, clone_project):
    project = clone_project(dvc_source, "project")
    add_remote(project, "s3://pnoc-dvc/roundtrip", s3_server.endpoint)
    # credentials only in .dvc/config.local (git-ignored by DVC), never in .dvc/config
    project.dvc("remote", "modify", "--local", "storage", "access_key_id", ACCESS_KEY)
    project.dvc("remote", "modify", "--local", "storage", "secret_access_key", SECRET_KEY)
    assert SECRET_KEY not in (project.root / ".dvc" / "config").read_text()
    assert SECRET_KEY in (project.root / ".dvc" / "config.local").read_text()

    before = output_hashes(project.root)
    assert any(k.startswith("data/synthetic/") for k in before) and "models/oc.pt" in before
    cached = cache_files(project.root)
    pushed = project.dvc("push")
    assert f"{len(cached)} files pushed" in pushed.stdout
    keys = remote_keys(s3_server, "roundtrip/")
    assert {k.removeprefix("roundtrip/") for k in keys} == cached

    remove_data(project.root)
    assert not (project.root / "models" / "oc.pt").exists()
    pulled = project.dvc("pull", *STAGES)
    assert f"{len(cached)} files fetched" in pulled.stdout
    assert output_hashes(project.root) == before
    assert "Cache and remote 'storage' are in sync" in project.dvc("status", "-c").stdout


class CutProxy:
    """A TCP relay to the S3 server that, once armed, calls ``on_cut`` (stop the server) when
    ``limit`` more request bytes have come through, and closes every connection then.

    It makes "the server dies in the middle of an upload" deterministic: the cut happens inside
    a request body. ``start()`` again serves on the same port.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cut = threading.Event()
        self._limit: int | None = None
        self._count = 0
        self._on_cut: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def start(self) -> CutProxy:
        self._limit, self._count = None, 0
        self.cut.clear()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def arm(self, limit: int, on_cut: Callable[[], None]) -> None:
        with self._lock:
            self._limit, self._count, self._on_cut = limit, 0, on_cut

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            socks, self._socks = list(self._socks), set()
        if listener is not None:
            listener.close()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by stop()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            for args in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count and self._counts_to_cut(len(data)):
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _counts_to_cut(self, size: int) -> bool:
        with self._lock:
            self._count += size
            now = self._limit is not None and self._count >= self._limit and not self.cut.is_set()
            if now:
                self.cut.set()
        if now:
            assert self._on_cut is not None
            self._on_cut()
            self.stop()
        return self.cut.is_set()


def test_push_survives_server_crash_mid_upload(s3_factory, dvc_source, clone_project):
    server = s3_factory()
    proxy = CutProxy(server.port).start()
    try:
        project = clone_project(dvc_source, "project")
        # credentials from the environment this time
        project.env |= {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        endpoint = f"http://127.0.0.1:{proxy.port}"
        add_remote(project, "s3://pnoc-dvc/crash", endpoint)
        before = output_hashes(project.root)
        cached = cache_files(project.root)

        # a first push of the dataset only: the remote holds part of the data
        project.dvc("push", "data/synthetic")
        partial = set(remote_keys(server, "crash/"))
        assert partial and len(partial) < len(cached)

        # the next push uploads models/oc.pt (~45 MB): the server is killed (SIGKILL) after
        # 1 MiB of it has gone through, in the middle of the request body
        proxy.arm(1 << 20, server.kill)
        failed = project.dvc("push", check=False)
        assert proxy.cut.is_set() and not server.running
        assert failed.returncode != 0
        assert "Could not connect to the endpoint URL" in failed.stderr
        assert re.search(
            r"failed to push data to the cloud - \d+ files failed to upload", failed.stderr
        )

        # while it is down, a push fails at once with the endpoint named
        down = project.dvc("push", check=False)
        assert down.returncode != 0
        assert f'Could not connect to the endpoint URL: "{endpoint}/' in down.stderr

        # restarted on the same folder and port: what was pushed before the crash is there
        # (and no truncated object of the interrupted upload)
        server.start()
        proxy.start()
        after_crash = {k.removeprefix("crash/") for k in remote_keys(server, "crash/")}
        assert {k.removeprefix("crash/") for k in partial} <= after_crash
        model = md5_key(project.root / "models" / "oc.pt")
        assert model not in after_crash
        retried = project.dvc("push")
        # only what is missing is sent (the interrupted push may have sent small files first)
        sent = re.search(r"^(\d+) files? pushed$", retried.stdout, re.MULTILINE)
        assert sent and int(sent.group(1)) == len(cached - after_crash)
        assert {k.removeprefix("crash/") for k in remote_keys(server, "crash/")} == cached
        size = server.client().head_object(Bucket="pnoc-dvc", Key=f"crash/{model}")
        assert size["ContentLength"] == (project.root / "models" / "oc.pt").stat().st_size

        # a fresh checkout (no cache, no outputs, no credentials in files) gets everything back
        clean = clone_project(project, "clean", with_data=False)
        clean.env |= {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        assert not (clean.root / ".dvc" / "config.local").exists()
        clean.dvc("pull", *STAGES)
        assert output_hashes(clean.root) == before
    finally:
        proxy.stop()


def test_wrong_credentials_are_refused(s3_server, dvc_source, clone_project):
    # the server's own answers, as boto3 sees them
    with pytest.raises(ClientError) as unknown:
        s3_server.client("nobody", "whatever").list_objects_v2(Bucket="pnoc-dvc")
    assert unknown.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert "does not exist in our records" in str(unknown.value)
    with pytest.raises(ClientError) as bad_secret:
        s3_server.client(ACCESS_KEY, "wrong-secret").list_objects_v2(Bucket="pnoc-dvc")
    assert bad_secret.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as anonymous:
        s3_server.client("", "").list_objects_v2(Bucket="pnoc-dvc")
    assert anonymous.value.response["Error"]["Code"] == "AccessDenied"

    # DVC with a wrong secret (config.local), then with an unknown key (env)
    project = clone_project(dvc_source, "project")
    add_remote(project, "s3://pnoc-dvc/refused", s3_server.endpoint)
    project.dvc("remote", "modify", "--local", "storage", "access_key_id", ACCESS_KEY)
    project.dvc("remote", "modify", "--local", "storage", "secret_access_key", "wrong-secret")
    refused = project.dvc("push", check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr and "(403)" in refused.stderr

    (project.root / ".dvc" / "config.local").unlink()
    project.env |= {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "whatever"}
    refused = project.dvc("pull", *STAGES, check=False)
    assert refused.returncode != 0
    assert "failed to connect to s3" in refused.stderr
    assert "Forbidden" in refused.stderr and "(403)" in refused.stderr

    # and no credentials at all
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        project.env.pop(key)
    missing = project.dvc("push", check=False)
    assert missing.returncode != 0
    assert "Unable to locate credentials" in missing.stderr

    assert remote_keys(s3_server, "refused/") == []  # nothing was written
