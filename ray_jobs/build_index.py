"""RayJob entry point for index building: the same code path as `crops index`.

A RayJob's `entrypoint` runs this on the head node of its RayCluster:

    python ray_jobs/build_index.py --model s3-mounted/model --videos /data/videos.parquet \
        --videos /data/synth_videos.parquet --out /data/index --factory IVF4096,PQ32 --gpu

It calls `crops index` with the given options. Ray is already up there (KubeRay sets
RAY_ADDRESS), so `ray.init()` joins that cluster: embedding actors and shard tasks spread over
its nodes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crops.cli import app


def main(argv: Sequence[str] | None = None) -> int:
    """Run `crops index ARGV`; the exit status (2: bad input) instead of leaving the process."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(["index", *args], standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
