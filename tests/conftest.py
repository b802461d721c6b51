"""Shared fixtures: one tiny simulated world per session (seconds), reused read-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from crops.world.config import WorldConfig
from crops.world.simulate import simulate
from crops.world.world import World


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny world (seed 1) on disk; tests must not modify it (copy it first)."""
    out = tmp_path_factory.mktemp("tiny-world")
    simulate(WorldConfig.for_scale("tiny", seed=1), out)
    return out


@pytest.fixture(scope="session")
def tiny_world(tiny_dir: Path) -> World:
    return World.load(tiny_dir)
