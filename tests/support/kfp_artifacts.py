"""KFP artifacts for calling a component's `python_func` directly, as the KFP launcher would
hand them over (the tests in components/<name>/tests/)."""

from __future__ import annotations

from pathlib import Path


def out(kind, tmp_path: Path, name: str):
    """An output artifact at a fresh path, as the KFP launcher hands one to a component."""
    return kind(uri=str(tmp_path / name))


def given(kind, path: Path):
    """An input artifact over an existing path."""
    return kind(uri=str(path))


def options(argv: list[str]) -> dict[str, str]:
    """--option value pairs of a command line."""
    return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
