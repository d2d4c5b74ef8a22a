"""The README's and docs' commands work as written, in a shell where the venv is not activated
(PATH without the venv's bin): each documented `.venv/bin/...` command exists, and serving,
predicting and the MLflow UI run for real."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pnoc_pipelines.serving.server import stop
from tests.conftest import REPO

BIN = Path(sys.executable).parent  # the project's venv: .venv/bin in a checkout
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _plain_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no venv on PATH, no virtualenv variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.update(extra)
    return env


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `.venv/bin/...` command line in a fenced block of the docs."""
    found = []
    for doc in DOCS:
        in_block = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            text = line.split("  #")[0].strip().rstrip("\\").strip().rstrip("&").strip()
            if in_block and text.startswith(".venv/bin/"):
                found.append((f"{doc.name}:{n}", shlex.split(text)))
    return found


def _help_argv(argv: list[str]) -> list[str]:
    """The program and its subcommands (words before the first option or argument), + --help."""
    words = [str(BIN / Path(argv[0]).name)]
    for word in argv[1:]:
        if word.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        words.append(word)
    return [*words, "--help"]


def test_the_docs_document_commands():
    where = {w.split(":")[0] for w, _ in documented_commands()}
    assert {"README.md", "serving.md"} <= where


@pytest.mark.parametrize(("where", "argv"), documented_commands(), ids=lambda v: str(v)[:60])
def test_each_documented_command_exists(where, argv):
    assert argv[0].startswith(".venv/bin/")
    proc = subprocess.run(
        _help_argv(argv), env=_plain_env(), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{where}: {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}"


# -- the real thing ----------------------------------------------------------------------


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s")


@contextlib.contextmanager
def _started(argv: list[str], cwd: Path, env: dict[str, str]):
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with params.yaml and the champion registered under its default name,
    in the project's own store (no MLFLOW_TRACKING_URI)."""
    import torch

    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus

    root = tmp_path_factory.mktemp("readme") / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        (root / name).write_text((REPO / name).read_text())
    torch.manual_seed(0)
    save_model(root / "deeplab.pt", DeepLabV3Plus("resnet18", 3), {"class_names": ["bg", "a", "b"]})
    name = yaml.safe_load((REPO / "params.yaml").read_text())["register"]["model_name"]
    script = (
        "import mlflow\n"
        "from pnoc_pipelines import serving, tracking\n"
        "tracking.configure()\n"
        "with mlflow.start_run():\n"
        "    info = serving.log_segmenter('deeplab.pt', scales=[1.0], flip=True)\n"
        f"serving.register(info.model_uri, {name!r}, metric_name='miou', metric_value=0.5)\n"
    )
    env = _plain_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([sys.executable, "-c", script], cwd=root, env=env, check=True, timeout=300)
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(root / "photo.png")
    return root, env


@pytest.mark.slow
def test_serve_and_predict_as_the_readme_writes_them(project):
    from pnoc_pipelines.serving import free_port, post_json

    root, env = project
    out = subprocess.run(
        [".venv/bin/pnoc", "predict", "photo.png", "--out", "predictions/"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
        executable=str(BIN / "pnoc"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (root / "predictions" / "photo_mask.png").is_file()
    assert re.search(r"classes (bg|a|b)", out.stdout), out.stdout  # names, not indices

    port = free_port()
    argv = [str(BIN / "pnoc"), "serve", "--port", str(port)]
    with _started(argv, root, env) as proc:
        _wait_for(f"http://127.0.0.1:{port}/ping", proc)
        from pnoc.serving import encode_image_b64

        image = encode_image_b64(np.full((20, 30, 3), 120, np.uint8))
        status, body = post_json(
            f"http://127.0.0.1:{port}/invocations",
            {"dataframe_split": {"columns": ["image"], "data": [[image]]}},
        )
        assert status == 200 and np.asarray(body["predictions"][0]["mask"]).shape == (20, 30)


@pytest.mark.slow
def test_the_mlflow_ui_command_answers(project):
    from pnoc_pipelines.serving import free_port

    root, env = project
    port = free_port()
    argv = [str(BIN / "mlflow"), "ui", "--backend-store-uri", "sqlite:///mlflow.db"]
    with _started([*argv, "--port", str(port)], root, env) as proc:
        _wait_for(f"http://127.0.0.1:{port}/", proc, timeout=180)


def test_predict_outside_a_project_says_so_and_creates_nothing(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = _plain_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [str(BIN / "pnoc"), "predict", "photo.png"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "no MLflow store here" in proc.stderr, proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
