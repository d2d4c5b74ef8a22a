"""Search-space entries: parsing, validation against Params, conversion, overrides."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pnoc.errors import ConfigError
from pnoc.tune import apply_overrides, get_dotted, parse_space, to_optuna, to_ray, validate_space
from tests.conftest import REPO


@pytest.fixture
def params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_ranges_and_choices_parse_with_the_parameter_type():
    space = parse_space(
        [
            {"param": "saliency.delta_fg", "low": 0.3, "high": 0.7},
            {"param": "saliency.lambda_h", "low": 0.1, "high": 10, "log": True},
            {"param": "affinity.radius", "low": 2, "high": 6},
            {"param": "cam.method", "choices": ["poc", "pnoc"]},
        ]
    )
    assert [p.kind for p in space] == ["float", "float", "int", "other"]
    assert space[1].log and space[1].high == 10.0 and isinstance(space[1].high, float)
    assert space[2].low == 2 and isinstance(space[2].low, int)
    assert space[3].choices == ("poc", "pnoc") and not space[3].is_range


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"param": "saliency.delta_fg", "low": 0.5, "high": 0.5}, "empty or inverted range"),
        ({"param": "saliency.delta_fg", "low": 0.7, "high": 0.2}, "empty or inverted range"),
        ({"param": "saliency.delta", "low": 0.1, "high": 0.2}, "unknown parameter"),
        ({"param": "salience.delta_fg", "low": 0.1, "high": 0.2}, "unknown parameter"),
        ({"param": "saliency", "low": 0.1, "high": 0.2}, "is a section"),
        ({"param": "saliency.delta_fg.x", "low": 0.1, "high": 0.2}, "is a value, not a section"),
        ({"param": "saliency.lambda_h", "low": 0.0, "high": 2.0, "log": True}, "positive bounds"),
        ({"param": "saliency.lambda_h", "low": -1, "high": 2.0, "log": True}, "positive bounds"),
        ({"param": "affinity.radius", "low": 2.5, "high": 6}, "integer bounds"),
        ({"param": "saliency.flip", "low": 0, "high": 1}, "cannot take a range"),
        ({"param": "saliency.delta_fg", "low": 0.1}, "needs both"),
        ({"param": "saliency.delta_fg", "choices": []}, "non-empty list"),
        ({"param": "saliency.delta_fg", "choices": [0.1, 0.1]}, "duplicates"),
        ({"param": "saliency.delta_fg", "choices": [0.1], "low": 0.0}, "not both"),
        ({"param": "saliency.delta_fg", "low": 0.1, "high": 0.2, "step": 1}, "unknown key"),
        ({"param": "saliency.delta_fg", "low": "a", "high": 0.2}, "finite numbers"),
    ],
)
def test_bad_entries_are_refused(entry, message):
    with pytest.raises(ConfigError, match=message):
        parse_space([entry])


def test_empty_space_and_duplicates_are_refused():
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_space([])
    entry = {"param": "saliency.delta_fg", "low": 0.1, "high": 0.2}
    with pytest.raises(ConfigError, match="listed twice"):
        parse_space([entry, entry])


def test_bounds_the_parameter_refuses_are_caught_before_any_trial(params):
    validate_space(parse_space([{"param": "saliency.delta_fg", "low": 0.3, "high": 1.0}]), params)
    with pytest.raises(ConfigError, match=r"saliency.delta_fg: 1.5 is not a valid value"):
        validate_space(
            parse_space([{"param": "saliency.delta_fg", "low": 0.3, "high": 1.5}]), params
        )
    with pytest.raises(ConfigError, match="magic"):
        validate_space(parse_space([{"param": "cam.method", "choices": ["poc", "magic"]}]), params)


def test_apply_overrides_returns_a_new_nested_dict(params):
    before = yaml.safe_dump(params)
    out = apply_overrides(
        params,
        {"saliency.delta_fg": 0.3, "cam.pnoc.ow.end": 2.0, "saliency.max_steps_per_epoch": 4},
    )
    assert yaml.safe_dump(params) == before  # input untouched
    assert out["saliency"]["delta_fg"] == 0.3
    assert out["cam"]["pnoc"]["ow"] == {**params["cam"]["pnoc"]["ow"], "end": 2.0}
    assert get_dotted(out, "saliency.max_steps_per_epoch") == 4
    assert out["saliency"]["lambda_h"] == params["saliency"]["lambda_h"]
    out["cam"]["pnoc"]["ow"]["start"] = 9.0
    assert params["cam"]["pnoc"]["ow"]["start"] == 0.0  # no shared sub-dicts
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides(params, {"saliency.delta_fg.x": 1})


def test_ray_space_converts_to_the_same_optuna_distributions():
    from ray.tune.search.optuna import OptunaSearch

    space = parse_space(
        [
            {"param": "saliency.delta_fg", "low": 0.3, "high": 0.7},
            {"param": "saliency.lambda_h", "low": 0.1, "high": 10, "log": True},
            {"param": "affinity.radius", "low": 2, "high": 6},
            {"param": "affinity.epochs", "low": 1, "high": 8, "log": True},
            {"param": "saliency.weights", "choices": [None, "w.pth"]},
        ]
    )
    assert OptunaSearch.convert_search_space(to_ray(space)) == to_optuna(space)
    assert to_optuna(space)["affinity.radius"].high == 6  # inclusive upper bound
