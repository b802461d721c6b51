"""`crops simulate` through the real CLI, then `crops validate` on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path


def test_simulate_then_validate_exits_0_with_the_summary(run, tmp_path: Path) -> None:
    out = tmp_path / "X"
    code, stdout, stderr = run("simulate", "--scale", "tiny", "--seed", "1", "--out", out)
    assert code == 0, stderr
    meta = json.loads((out / "world.json").read_text())
    assert meta["config"]["scale"] == "tiny" and meta["config"]["seed"] == 1
    assert f"{meta['summary']['exposure_coverage']:.4f}" in stdout
    assert f"{meta['counts']['search_log']}" in stdout
    code, stdout, stderr = run("validate", out)
    assert code == 0, stderr
    assert "exposure_coverage" in stdout
    assert (out / "_quarantine" / "search_log.parquet").exists()


def test_simulate_rejects_an_unknown_scale(run, tmp_path: Path) -> None:
    code, _, stderr = run("simulate", "--scale", "huge", "--out", tmp_path / "X")
    assert code == 2
    assert "huge" in stderr
    assert not (tmp_path / "X").exists()


def test_simulate_refuses_a_file_as_out(run, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    code, _, stderr = run("simulate", "--scale", "tiny", "--out", target)
    assert code == 2
    assert "not a directory" in stderr


def test_a_world_from_another_simulator_version_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    import shutil

    import pytest

    from crops.world.world import World

    copy = Path(shutil.copytree(tiny_dir, tmp_path / "w"))
    meta = json.loads((copy / "world.json").read_text())
    meta["simulator"] = "0.0.0"
    (copy / "world.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="simulate the world again"):
        World.load(copy)
    with pytest.raises(FileNotFoundError, match="world.json"):
        World.load(tmp_path)
