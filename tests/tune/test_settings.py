"""Sweep settings: everything that would waste a sweep is refused before Ray starts."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from pnoc.errors import ConfigError
from pnoc.tune import KINDS, apply_overrides, load_sweep
from tests.conftest import REPO


@pytest.fixture
def params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "pipelines" / "sweep.yaml").read_text())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_shipped_sweep_yaml_is_valid(kind, params, config):
    sweep = load_sweep(config, kind, params)
    assert sweep.metric in sweep.metrics
    epochs_key = KINDS[kind].epochs_key.split(".")
    assert sweep.base_params[epochs_key[0]][epochs_key[1]] == sweep.settings.epochs
    assert load_sweep(config, kind, params, num_samples=5).settings.num_samples == 5


def _broken(config: dict, kind: str, **changes: Any) -> dict:
    out = copy.deepcopy(config)
    out[kind].update(changes)
    return out


@pytest.mark.parametrize(
    ("kind", "changes", "message"),
    [
        ("saliency", {"metric": "cam_miou"}, "never reported by objective 'proxy'"),
        ("saliency", {"metric": "pseudo_mask_miou"}, "never reported"),
        ("adversarial", {"metric": "miou"}, "never reported by objective 'cams'"),
        ("saliency", {"objective": "walk"}, "objective 'walk' is unknown"),
        ("saliency", {"epochs": 2, "asha": {"grace_period": 3}}, "grace_period 3 exceeds"),
        ("saliency", {"epochs": 0}, "epochs"),
        ("saliency", {"mode": "maximum"}, "mode"),
        ("saliency", {"space": []}, "non-empty list"),
        (
            "saliency",
            {"space": [{"param": "saliency.epochs", "low": 1, "high": 4}]},
            "set by the sweep",
        ),
        (
            "saliency",
            {"space": [{"param": "affinity.radius", "low": 2, "high": 6}]},
            "does not affect objective 'proxy'",
        ),
        ("adversarial", {"space": [{"param": "saliency.lambda_h", "low": 1, "high": 2}]}, "affect"),
        (
            "saliency",
            {"overrides": {"saliency.delta_fg": 0.3}},
            "both searched and fixed",
        ),
        ("saliency", {"overrides": {"saliency.nope": 1}}, "unknown parameter"),
        ("saliency", {"overrides": {"saliency.batch_size": 0}}, "batch_size"),
        ("saliency", {"max_concurrent": 0}, "max_concurrent"),
        ("saliency", {"typo": 1}, "typo"),
    ],
)
def test_bad_settings_are_refused(params, config, kind, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(_broken(config, kind, **changes), kind, params)


def test_the_full_objective_may_search_affinity_and_walk_params(params, config):
    space = [
        {"param": "saliency.delta_fg", "low": 0.3, "high": 0.7},
        {"param": "affinity.radius", "low": 2, "high": 6},
        {"param": "pseudo_masks.beta", "low": 4, "high": 12},
    ]
    cfg = _broken(config, "saliency", objective="pseudo_masks", metric="pseudo_mask_miou")
    cfg["saliency"]["space"] = space
    assert load_sweep(cfg, "saliency", params).objective == "pseudo_masks"


def test_knobs_of_an_unused_method_are_refused(params, config):
    vanilla = apply_overrides(params, {"cam.method": "vanilla"})
    with pytest.raises(ConfigError, match="no effect with cam.method 'vanilla'"):
        load_sweep(config, "adversarial", vanilla)
    cfg = _broken(config, "adversarial", overrides={"cam.method": "pnoc"})
    load_sweep(cfg, "adversarial", vanilla)  # fixed for the sweep: fine


def test_unknown_sweep_and_section(params, config):
    with pytest.raises(ConfigError, match="unknown sweep"):
        load_sweep(config, "segmentation", params)
    with pytest.raises(ConfigError, match="unknown section"):
        load_sweep({**config, "extra": {}}, "saliency", params)


def test_identity_ignores_the_searched_keys_only(params, config):
    sweep = load_sweep(config, "saliency", params)
    applied = apply_overrides(params, {"saliency.delta_fg": 0.33, "saliency.lambda_h": 3.0})
    assert load_sweep(config, "saliency", applied).fingerprint() == sweep.fingerprint()
    changed = apply_overrides(params, {"saliency.alpha": 0.5})
    assert load_sweep(config, "saliency", changed).fingerprint() != sweep.fingerprint()
    more = load_sweep(config, "saliency", params, num_samples=99, max_concurrent=7)
    assert more.fingerprint() == sweep.fingerprint()
