"""RayJob entry point for training: the same code path as `crops train`.

    python -m crops.ray_jobs.train --samples /artifacts/run/samples.parquet ... --gpu --workers 8

Ray is already up on the job's cluster, so the trainer joins it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crops.ray_jobs import run


def main(argv: Sequence[str] | None = None) -> int:
    """`crops train ARGV`; the exit status."""
    return run("train", argv)


if __name__ == "__main__":
    sys.exit(main())
