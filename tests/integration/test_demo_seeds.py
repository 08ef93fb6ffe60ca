"""A second ``leadpulse demo`` in the same data directory does not reuse the first one's event ids: the same
seed makes the same ids with other times and contents, and the stored history mixed two datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from leadpulse.demo import choose_seed
from leadpulse.demo_services import DemoError

pytestmark = pytest.mark.integration  # reads and writes files


def quiet() -> Console:
    return Console(record=True, width=200)


def test_a_fresh_directory_gets_the_default_seed(tmp_path: Path) -> None:
    assert choose_seed(tmp_path, None, quiet()) == 7
    assert choose_seed(tmp_path, 42, quiet()) == 42


def test_the_default_moves_on_to_a_seed_the_directory_has_no_traffic_of(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"seed": 7}))  # a directory from an older version
    console = quiet()
    assert choose_seed(tmp_path, None, console) == 8
    assert "adding seed 8" in console.export_text()
    (tmp_path / "demo-seeds.json").write_text(json.dumps([7, 8]))
    assert choose_seed(tmp_path, None, quiet()) == 9


def test_a_seed_asked_for_again_is_refused_naming_reset(tmp_path: Path) -> None:
    (tmp_path / "demo-seeds.json").write_text(json.dumps([7]))
    with pytest.raises(DemoError, match=r"already holds the demo traffic of seed 7.*--reset"):
        choose_seed(tmp_path, 7, quiet())
