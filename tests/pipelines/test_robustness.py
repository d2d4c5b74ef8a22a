"""`pnoc robustness` on the tiny config: two generated data sets, the table, the report and
MLflow runs; bad datasets files are refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pnoc.errors import ConfigError
from pnoc_pipelines.robustness import read_datasets, robustness, summarise


def _files(tmp_path: Path, tiny_params: dict, datasets: dict) -> tuple[Path, Path]:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    datasets_file = tmp_path / "datasets.yaml"
    datasets_file.write_text(yaml.safe_dump({"datasets": datasets}))
    return params_file, datasets_file


@pytest.mark.slow
def test_report_over_data_sets_and_seeds(tiny_params, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = {
        "a": {"set": {"data.synthetic.seed": 1}},
        "b": {"set": {"data.synthetic.seed": 2, "data.synthetic.body_size": [0.3, 0.5]}},
    }
    params_file, datasets_file = _files(tmp_path, tiny_params, datasets)
    report = robustness(params_file, datasets_file, ["vanilla", "pnoc"], [0], refine="pnoc")

    # Each data set was generated with its own generator params, in its own folder.
    for name, seed in (("a", 1), ("b", 2)):
        generator = json.loads((tmp_path / "data/robustness" / name / "generator.json").read_text())
        assert generator["seed"] == seed
    assert generator["body_size"] == [0.3, 0.5]
    ids_a = (tmp_path / "data/robustness/a/ImageSets/Segmentation/train.txt").read_text()
    assert len(ids_a.split()) == tiny_params["data"]["synthetic"]["train"]

    records = report["records"]
    assert [(r["dataset"], r["method"]) for r in records] == [
        ("a", "vanilla"),
        ("a", "pnoc"),
        ("b", "vanilla"),
        ("b", "pnoc"),
    ]
    for r in records:
        assert 0.0 < r["cam_miou"] <= 1.0
        assert 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["precision"] <= 1.0
        assert ("pseudo_miou" in r) == (r["method"] == "pnoc")
    refined = [r for r in records if "pseudo_miou" in r]
    assert all(0.0 < r["pseudo_miou"] <= 1.0 for r in refined)

    # The summary is computed from the records: per data set and overall.
    overall = report["summary"]["overall"]
    pnoc = [r["cam_miou"] for r in records if r["method"] == "pnoc"]
    assert overall["methods"]["pnoc"]["mean"] == pytest.approx(sum(pnoc) / 2)
    vanilla_a = report["summary"]["datasets"]["a"]["methods"]["vanilla"]["mean"]
    pnoc_a = report["summary"]["datasets"]["a"]["methods"]["pnoc"]["mean"]
    assert report["summary"]["datasets"]["a"]["gaps"]["pnoc-vanilla"] == pytest.approx(
        pnoc_a - vanilla_a
    )
    gains = [r["pseudo_miou"] - r["cam_miou_pseudo_split"] for r in refined]
    assert overall["pseudo_masks"]["gain"]["mean"] == pytest.approx(sum(gains) / 2)

    saved = json.loads((tmp_path / "reports/robustness.json").read_text())
    assert saved["summary"] == report["summary"]
    table = (tmp_path / "reports/robustness.md").read_text()
    assert "| a |" in table and "| b |" in table and "**overall**" in table
    assert f"| pnoc | {100 * overall['methods']['pnoc']['recall']:.1f} |" in table

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("pnoc").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"robustness", "a-vanilla-seed0", "b-pnoc-seed0"} <= set(by_name)
    parent = by_name["robustness"]
    assert parent.data.metrics["pnoc.mean_miou"] == pytest.approx(
        overall["methods"]["pnoc"]["mean"]
    )
    assert by_name["b-pnoc-seed0"].data.params["set.data.synthetic.seed"] == "2"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"robustness.json", "robustness.md"} <= artifacts

    # A second run reuses the generated data (same generator params: files untouched) and the
    # results kept under it (same params, seed and method), training nothing.
    marker = tmp_path / "data/robustness/a/generator.json"
    stamp = marker.stat().st_mtime_ns
    kept = sorted(p.name for p in (tmp_path / "data/robustness/a/results").iterdir())
    assert [k.split("-")[:2] for k in kept] == [["seed0", "pnoc"], ["seed0", "vanilla"]]
    from pnoc_pipelines import ablate

    monkeypatch.setattr(ablate.train_cam, "run", lambda *a, **k: pytest.fail("retrained"))
    again = robustness(params_file, datasets_file, ["vanilla"], [0], refine=None)
    assert marker.stat().st_mtime_ns == stamp
    assert [r["cam_miou"] for r in again["records"]] == [
        r["cam_miou"] for r in records if r["method"] == "vanilla"
    ]
    assert all(r["reused"] for r in again["records"])


def test_summary_of_hand_made_records():
    rows = [
        {"dataset": "a", "seed": 0, "method": "vanilla", "cam_miou": 0.30},
        {"dataset": "a", "seed": 1, "method": "vanilla", "cam_miou": 0.34},
        {"dataset": "a", "seed": 0, "method": "pnoc", "cam_miou": 0.40, "pseudo_miou": 0.50,
         "cam_miou_pseudo_split": 0.42, "pseudo_split": "train"},
        {"dataset": "a", "seed": 1, "method": "pnoc", "cam_miou": 0.44, "pseudo_miou": 0.52,
         "cam_miou_pseudo_split": 0.44, "pseudo_split": "train"},
        {"dataset": "b", "seed": 0, "method": "vanilla", "cam_miou": 0.20},
        {"dataset": "b", "seed": 0, "method": "pnoc", "cam_miou": 0.18, "pseudo_miou": 0.30,
         "cam_miou_pseudo_split": 0.20, "pseudo_split": "train"},
    ]  # fmt: skip
    s = summarise(rows, ["vanilla", "pnoc"])
    a = s["datasets"]["a"]
    assert a["methods"]["vanilla"]["mean"] == pytest.approx(0.32)
    assert a["methods"]["vanilla"]["std"] == pytest.approx(0.0282843, abs=1e-6)
    assert a["gaps"]["pnoc-vanilla"] == pytest.approx(0.10)
    assert a["pseudo_masks"]["gain"]["mean"] == pytest.approx(0.08)
    assert s["datasets"]["b"]["gaps"]["pnoc-vanilla"] == pytest.approx(-0.02)
    overall = s["overall"]
    assert overall["methods"]["pnoc"]["mean"] == pytest.approx((0.40 + 0.44 + 0.18) / 3)
    assert overall["pseudo_masks"]["gain"]["mean"] == pytest.approx((0.08 + 0.08 + 0.10) / 3)


@pytest.mark.parametrize(
    "doc,match",
    [
        ({"sets": {}}, "'datasets' mapping"),
        ({"datasets": {"a b": {"set": {}}}}, r"datasets\.a b: a name"),
        ({"datasets": {"a": {"params": {}}}}, r"datasets\.a: expected a mapping with one key"),
        (
            {"datasets": {"a": {"set": {"cam.lr": 0.1}}}},
            r"datasets\.a\.set: 'cam\.lr' is not a generator param",
        ),
    ],
)
def test_bad_datasets_file_is_named(tmp_path, doc, match):
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=match) as err:
        read_datasets(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        read_datasets(tmp_path / "missing.yaml")


def test_bad_values_and_options_stop_before_any_work(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datasets = {"a": {"set": {"data.synthetic.cooccurrence": 1.5}}}
    params_file, datasets_file = _files(tmp_path, tiny_params, datasets)
    with pytest.raises(ConfigError, match=r"datasets\.a.*cooccurrence"):
        robustness(params_file, datasets_file, ["vanilla"], [0], refine=None)
    with pytest.raises(ConfigError, match="set them in"):
        robustness(
            params_file,
            datasets_file,
            ["vanilla"],
            [0],
            settings=["data.synthetic.seed=4"],
            refine=None,
        )
    with pytest.raises(ConfigError, match="--refine 'pnoc' is not among"):
        robustness(params_file, datasets_file, ["vanilla"], [0], refine="pnoc")
    assert not (tmp_path / "data").exists()  # nothing generated


def test_shipped_datasets_file_is_valid_and_untuned():
    specs = read_datasets(Path(__file__).parents[2] / "pipelines" / "robustness.yaml")
    assert len(specs) >= 3
    seeds = [s.settings.get("data.synthetic.seed", 0) for s in specs]
    assert 0 not in seeds  # the embedded default's generator seed, on which defaults were chosen


def test_map_quality_from_the_best_threshold_confusion_matrix():
    from types import SimpleNamespace

    import numpy as np

    from pnoc_pipelines.robustness import map_quality

    # rows: ground truth (bg, c1, c2), columns: prediction; best threshold at index 1.
    best = np.array([[50, 5, 15], [10, 20, 0], [0, 10, 30]])
    sweep = SimpleNamespace(
        matrices=np.stack([np.zeros((3, 3), int), best]), best_index=1, best_threshold=0.3
    )
    q = map_quality(sweep)
    # recall: (20 + 30) / (30 + 40) object pixels; precision: 50 / (35 + 45) class pixels.
    assert q == {"best_threshold": 0.3, "recall": 50 / 70, "precision": 50 / 80}
