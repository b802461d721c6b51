"""Shared benchmark helper: the world a bench runs on, either an existing folder (`--world`)
or one simulated at `--scale` (seed 1) into a temporary folder removed afterwards."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

from crops.world.config import Scale, WorldConfig
from crops.world.simulate import simulate


def add_world_args(p: argparse.ArgumentParser, default_scale: Scale) -> None:
    """`--world DIR` or `--scale NAME` (default `default_scale`)."""
    p.add_argument("--world", type=Path, help="an existing world directory")
    p.add_argument("--scale", choices=get_args(Scale), default=default_scale)


@contextmanager
def bench_world(args: argparse.Namespace, *, truth: bool = False) -> Iterator[Path]:
    """The world folder of `add_world_args`' options. `truth`: the bench reads the simulator's
    truth (world.json), so an existing folder without it is refused."""
    if args.world is not None:
        if truth and not (args.world / "world.json").is_file():
            raise SystemExit(f"--world {args.world}: no world.json (a simulated world's truth)")
        yield args.world
        return
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        simulate(WorldConfig.for_scale(args.scale, seed=1), Path(tmp) / "world")
        took = time.perf_counter() - start
        print(f"simulated {args.scale} seed 1 in {took:.1f} s (not measured below)")
        yield Path(tmp) / "world"
