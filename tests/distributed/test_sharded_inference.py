"""Sharded, batched inference (:mod:`pnoc.engine.inference`): two gloo worker processes write
the files one process writes, byte for byte, and return its metrics; batches give the maps of
per-image inference.

sharded_scenario.py runs the four inference steps (``cams``, ``saliency``, ``pseudo_masks``,
``evaluate``) as a script: once without a process group (the reference, batches of 16, images
decoded in this process) and as the two ranks of a gloo group (batches of 3, one DataLoader
worker each), all three processes at once, each with one torch thread.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pnoc.cam.inference import multiscale_cams, normalize_cams
from pnoc.data.files import read_mask
from pnoc.engine import Runtime
from pnoc.engine.inference import group_by_size, inference_loop, per_image
from pnoc.errors import DatasetError
from pnoc.refine.pseudo_masks import affinity_features
from pnoc.saliency.inference import predict_saliency, predict_saliency_batch
from pnoc.segmentation.inference import predict_probs

SCRIPT = Path(__file__).with_name("sharded_scenario.py")
FOLDERS = ("cams", "saliency", "pseudo_masks")


def _scenario() -> Any:
    spec = importlib.util.spec_from_file_location("sharded_scenario", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scenario = _scenario()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sharded")
    scenario.build(work)
    return work


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(work: Path, out: Path, batch: int, loaders: int, env: dict) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(work), str(out), str(batch), str(loaders)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(work: Path) -> dict[str, Path]:
    """The reference (one process) and the two ranks, run at once; their OUT folders."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    group = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = {
        "reference": _worker(work, work / "reference", 16, 0, env),
        "rank 0": _worker(work, work / "sharded", 3, 1, {**group, "RANK": "0", "LOCAL_RANK": "0"}),
        "rank 1": _worker(work, work / "sharded", 3, 1, {**group, "RANK": "1", "LOCAL_RANK": "1"}),
    }
    for name, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            raise
        assert proc.returncode == 0, f"{name} failed:\n{output}"
    return {"reference": work / "reference", "sharded": work / "sharded"}


def _result(out: Path, rank: int = 0) -> dict[str, Any]:
    return pickle.loads((out / f"result-{rank}.pkl").read_bytes())


def assert_same(a: Any, b: Any, where: str = "result", *, atol: float = 0.0) -> None:
    """Equal structures: the same keys, lengths and values, arrays element for element (NaN
    too); ``atol`` for the elements of float arrays."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]", atol=atol)
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]", atol=atol)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        if atol and np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=where)
        else:
            np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float):
        assert (a == b) or (np.isnan(a) and np.isnan(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_results(a: dict[str, Any], b: dict[str, Any], where: str) -> None:
    """The steps' results equal, the float saliency maps of the shown images within 1e-6 (the
    sigmoid rounds a tensor's last elements apart, its vectorised tail: they depend on which
    images share the batch; the PNGs, 8-bit, are compared byte for byte elsewhere)."""
    for step in ("cams", "saliency", "pseudo_masks", "evaluate"):
        if step == "saliency":
            assert_same(a[step][0], b[step][0], f"{where} saliency report")
            assert_same(a[step][1], b[step][1], f"{where} saliency shown", atol=1e-6)
        elif step in a:
            assert_same(a[step], b[step], f"{where} {step}")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_workers_write_the_files_of_one_byte_for_byte(runs: dict[str, Path]) -> None:
    for folder in FOLDERS:
        one, two = _files(runs["reference"] / folder), _files(runs["sharded"] / folder)
        assert len(one) in (22, 13) and one.keys() == two.keys(), folder
        different = [name for name in one if one[name] != two[name]]
        assert not different, f"{folder}: {different} differ"
    leftovers = [p.name for p in runs["sharded"].iterdir() if p.name.startswith(".")]
    assert not leftovers  # every shared temporary folder was published or removed


def test_two_workers_return_the_metrics_of_one_on_every_rank(runs: dict[str, Path]) -> None:
    reference = _result(runs["reference"])
    assert reference["pseudo_masks"][0]["fallback_images"] == 5  # every third image of train
    assert len(reference["saliency"][1]) == 6 and len(reference["evaluate"][1]) == 6
    for rank in (0, 1):
        result = _result(runs["sharded"], rank)
        assert result["world"] == f"rank {rank} of 2"
        assert_same_results(reference, result, f"rank {rank}")


def test_a_failing_worker_fails_every_worker_and_publishes_nothing(
    runs: dict[str, Path], work: Path
) -> None:
    broken = str(work / "data" / "JPEGImages" / "broken.jpg")
    kind, message = _result(runs["reference"])["broken"]
    assert kind == "DatasetError" and message.startswith(broken)
    kind, message = _result(runs["sharded"], 1)["broken"]  # its share holds the broken image,
    assert kind == "DatasetError" and message.startswith(broken)  # decoded in a loader worker
    kind, message = _result(runs["sharded"], 0)["broken"]
    assert kind == "PnocError" and "another worker failed" in message
    assert not (runs["sharded"] / "broken").exists()


def test_rank_0_alone_logs_progress_over_the_whole_split(runs: dict[str, Path]) -> None:
    def counts(lines: list[str]) -> list[tuple[str, int]]:
        found = [re.match(r"(.+): (\d+) images in ", line) for line in lines]
        return [(m[1], int(m[2])) for m in found if m]

    expected = [
        ("cams train", 13),
        ("cams val", 9),
        ("saliency train", 13),
        ("saliency val", 9),
        ("pseudo-masks", 13),
        ("evaluate", 9),
    ]
    assert counts(_result(runs["reference"])["progress"]) == expected
    assert counts(_result(runs["sharded"], 0)["progress"]) == expected
    assert _result(runs["sharded"], 1)["progress"] == []


def test_batches_give_the_files_and_metrics_of_per_image_inference(
    work: Path, tmp_path: Path
) -> None:
    runtime = Runtime(progress=False)
    one = scenario.run_steps(work, tmp_path / "one", runtime, batch_size=1)
    batched = scenario.run_steps(work, tmp_path / "batched", runtime, batch_size=16)
    assert_same_results(one, batched, "batches of 16")
    for folder in FOLDERS:
        a, b = _files(tmp_path / "one" / folder), _files(tmp_path / "batched" / folder)
        assert a.keys() == b.keys() and [n for n in a if a[n] != b[n]] == [], folder


@pytest.mark.parametrize("flip", [True, False])
def test_batched_network_maps_match_per_image_maps(work: Path, flip: bool) -> None:
    """Batches as the steps form them (:func:`per_image`) against one image at a time.

    With the flip (every step's default) per-image inference forwards two images as well, and
    the maps are equal; without it a lone small image runs other CPU kernels (PyTorch's own 3×3
    convolution below 20480 input values) and the maps differ in rounding. The saliency's
    sigmoid rounds the last elements of a tensor apart (vectorised tail), so it gets 1e-6.
    """
    models = scenario.load_models(work)
    torch.manual_seed(1)
    images = torch.randn(5, 3, 40, 32)
    group = [{"index": i, "x": x} for i, x in enumerate(images)]
    copies = 2 if flip else 1
    # Other kernels round the raw maps apart by up to ~3e-5 of their size (timm's random Lite0:
    # 2e-4 on values of 6-8), i.e. up to ~5e-5 on max-normalised CAMs; the affinity features
    # are unnormalised, hence the relative part.
    atol, rtol = (0.0, 0.0) if flip else (1e-4, 1e-5)

    def cams(x: torch.Tensor) -> torch.Tensor:
        return normalize_cams(multiscale_cams(models["cam"], x, scales=(1.0, 0.5), flip=flip))

    def probs(x: torch.Tensor) -> torch.Tensor:
        return predict_probs(models["deeplab"], x, scales=(1.0, 0.75), flip=flip)

    def feats(x: torch.Tensor) -> torch.Tensor:
        return affinity_features(models["affinity"], x, flip=flip)

    for fn in (cams, probs, feats):
        batched = per_image(fn, group, "cpu", copies=copies)
        for x, out in zip(images, batched, strict=True):
            alone = fn(x[None])[0]
            torch.testing.assert_close(out, alone, atol=atol, rtol=rtol, msg=fn.__name__)
    sals = per_image(
        lambda x: predict_saliency_batch(models["ccam"], x, flip=flip), group, "cpu", copies=copies
    )
    for x, sal in zip(images, sals, strict=True):
        np.testing.assert_allclose(sal, predict_saliency(models["ccam"], x, flip), atol=1e-6)


def test_loader_groups_same_size_images_and_reraises_errors_as_raised(tmp_path: Path) -> None:
    sizes = [(32, 32), (40, 32), (32, 32), (40, 32), (24, 24)]

    def item(i: int) -> dict[str, Any]:
        return {"index": i, "x": torch.zeros(3, *sizes[i])}

    groups = group_by_size([item(i) for i in range(5)])
    assert [[it["index"] for it in g] for g in groups] == [[0, 2], [1, 3], [4]]

    seen: list[list[int]] = []
    with inference_loop(Runtime(progress=False), item, 5, "sizes", batch_size=4) as batches:
        for group in batches:
            seen.append([it["index"] for it in group])
    assert seen == [[0, 2], [1, 3], [4]]

    load = functools.partial(_mask_item, tmp_path)
    loop = inference_loop(Runtime(progress=False, num_workers=1), load, 3, "masks")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "0.png"))), loop as batches:
        for _ in batches:
            pass


def _mask_item(folder: Path, i: int) -> dict[str, Any]:
    """An item whose mask file does not exist: read_mask raises a DatasetError naming it."""
    return {"index": i, "x": torch.zeros(3, 4, 4), "mask": read_mask(folder / f"{i}.png")}
