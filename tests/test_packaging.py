"""pyproject.toml lists every package folder, and the orchestration layer installs as
``pnoc_pipelines`` (a top-level name no other distribution claims)."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def _package_folders() -> set[str]:
    found = set()
    for init in (REPO / "src").rglob("*.py"):
        rel = init.parent.relative_to(REPO / "src")
        if "__pycache__" not in rel.parts:
            found.add(".".join(rel.parts))
    for module in (REPO / "pipelines").rglob("*.py"):
        rel = module.parent.relative_to(REPO / "pipelines")
        if "__pycache__" not in rel.parts:
            found.add(".".join(("pnoc_pipelines", *rel.parts)))
    return found


def test_pyproject_lists_every_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _package_folders()
    assert config["package-dir"]["pnoc_pipelines"] == "pipelines"


def test_orchestration_imports_under_its_own_name():
    import pnoc_pipelines.common

    assert pnoc_pipelines.common.__file__.startswith(str(REPO / "pipelines"))
