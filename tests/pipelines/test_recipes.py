"""Recipes: each resolves to known params keys, and applying one (``pnoc recipe apply`` or
``dvc exp run -S`` with ``pnoc recipe args``) changes exactly its keys in params.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from pnoc.config import flatten, parse_params
from pnoc.errors import ConfigError
from pnoc_pipelines import recipe
from tests.conftest import REPO

RECIPES = recipe.available()


def _values(path: Path) -> dict:
    return flatten(parse_params(yaml.safe_load(path.read_text())))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml and the recipes' dataset folders (they must exist for params to validate)."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for folder in ("data/VOC2012", "data/coco2014"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_recipes_are_there():
    assert {"voc12", "voc12-resnest", "coco14", "coco14-resnest"} <= set(RECIPES)
    assert {"voc12-smoke", "coco14-smoke"} <= set(RECIPES)
    assert not [r for r in RECIPES if r.startswith("_")]  # fragments are not listed


@pytest.mark.parametrize("name", RECIPES)
def test_apply_touches_exactly_the_recipes_keys(project: Path, name: str):
    path = project / "params.yaml"
    text = path.read_text()
    before = _values(path)
    values = recipe.load(name).values
    changes = recipe.apply(name, path)
    after = _values(path)
    assert {key: after[key] for key in values} == values
    changed = {k for k in after if after[k] != before[k]}
    assert changed <= set(values)
    assert {line.split(":")[0] for line in changes} == changed
    # Every comment line and every line of an untouched section survives the round trip.
    new_text = path.read_text()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            assert line in new_text


@pytest.mark.parametrize("name", ["voc12", "coco14-smoke"])
def test_dvc_exp_run_overrides_give_the_same_params(project: Path, name: str):
    """``dvc exp run $(pnoc recipe args NAME)``: DVC's own override code on the printed args."""
    applied, overridden = project / "params.yaml", project / "dvc_params.yaml"
    overridden.write_text(applied.read_text())
    recipe.apply(name, applied)
    args = recipe.set_args(name)
    assert args[::2] == ["-S"] * (len(args) // 2)
    apply_overrides(overridden, args[1::2])
    assert _values(overridden) == _values(applied)


def test_recipe_cli_in_a_shell_without_the_venv(project: Path):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    pnoc = str(Path(sys.executable).parent / "pnoc")
    listed = subprocess.run([pnoc, "recipe", "list"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "voc12 " in listed.stdout and "Pascal VOC 2012" in listed.stdout
    done = subprocess.run(
        [pnoc, "recipe", "apply", "coco14"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "data.name: synthetic -> coco14" in done.stdout
    assert yaml.safe_load((project / "params.yaml").read_text())["data"]["root"] == "data/coco2014"


def test_unknown_recipe_lists_the_recipes():
    with pytest.raises(ConfigError, match=r"recipe 'voc2012' does not exist; recipes: .*voc12"):
        recipe.load("voc2012")


def test_a_recipe_whose_dataset_is_missing_leaves_params_alone(tmp_path: Path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data.root: dataset folder 'data/VOC2012' does not"):
        recipe.apply("voc12", path)
    assert path.read_text() == (REPO / "params.yaml").read_text()


def test_bad_recipe_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(recipe, "RECIPES_DIR", tmp_path)
    (tmp_path / "typo.yaml").write_text("description: x\nparams: {cam: {lr_ratio: 1.0}}\n")
    with pytest.raises(ConfigError, match="recipe 'typo': unknown params key.*cam.lr_ratio"):
        recipe.load("typo")
    (tmp_path / "loop.yaml").write_text("description: x\nextends: [loop]\nparams: {}\n")
    with pytest.raises(ConfigError, match="'extends' loops"):
        recipe.load("loop")
    (tmp_path / "extra.yaml").write_text("description: x\nparms: {}\n")
    with pytest.raises(ConfigError, match=r"extra.yaml: unknown key\(s\) parms"):
        recipe.load("extra")
