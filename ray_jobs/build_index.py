"""RayJob entry point for index building: the same code path as `crops index`.

    python -m crops.ray_jobs.build_index --model /artifacts/model --videos /data/videos.parquet \
        --videos /data/synth_videos.parquet --out /data/index --factory IVF4096,PQ32 --gpu

Ray is already up on the job's cluster, so embedding actors and shard tasks spread over its nodes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crops.ray_jobs import run


def main(argv: Sequence[str] | None = None) -> int:
    """`crops index ARGV`; the exit status (2: bad input)."""
    return run("index", argv)


if __name__ == "__main__":
    sys.exit(main())
