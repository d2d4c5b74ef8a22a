"""The S3 server's data folder (objects, identity config, log) is private to its owner.

``pnoc dev s3`` creating a fresh folder is checked end to end in test_dev_cli.py.
"""

from __future__ import annotations

import stat
from pathlib import Path

from pnoc_pipelines.s3_server import private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_data_folder_is_created_private(tmp_path: Path):
    folder = private_dir(tmp_path / "a" / "s3")
    assert folder == tmp_path / "a" / "s3" and mode(folder) == 0o700


def test_an_existing_open_data_folder_is_narrowed(tmp_path: Path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "weed.log").write_text("kept\n")
    assert private_dir(folder) == folder and mode(folder) == 0o700
    assert (folder / "weed.log").read_text() == "kept\n"
