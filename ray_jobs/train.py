"""RayJob entry point for training: the same code path as `crops train`.

A RayJob's `entrypoint` runs this on the head node of its RayCluster:

    python ray_jobs/train.py --samples s3://bucket/run/samples.parquet ... --gpu --workers 8

It calls `crops train` with the given options (Ray is already up, so the trainer joins it).
"""

from __future__ import annotations

import sys

from crops.cli import app

if __name__ == "__main__":
    sys.exit(app(["train", *sys.argv[1:]], standalone_mode=True))
