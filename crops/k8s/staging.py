"""Staged RayJobs: how a pipeline task hands files to a RayJob and gets its outputs back.

A task and the RayJob it submits share the platform's artifacts volume, mounted at the same
path in both (`crops.k8s.platform.Platform.mounted_artifacts`). The task copies its inputs
under `<mount>/runs/<key>/<what>` (the key hashes the task's output URI, so a retried task
stages in the same place), submits the job with options naming the staged paths, waits, and
copies the job's output folder back to its own output. The train and index components both go
through `StagedRayJob`, so that sequence, the job's name and its wait are written once.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from crops.k8s.platform import Platform
from crops.k8s.rayjob import RayJobSpec, entrypoint, staging_root, submit_and_wait


@dataclass
class StagedRayJob:
    """One RayJob of a pipeline task, its files staged under `root` on the artifacts volume."""

    platform: Platform
    namespace: str
    root: Path
    key: str

    @classmethod
    def for_output(cls, output_uri: str, what: str, namespace: str) -> StagedRayJob:
        """The staging area of the task writing `output_uri` (the installed release's volume)."""
        platform = Platform.from_cluster(namespace)
        key = hashlib.sha256(output_uri.encode()).hexdigest()[:10]
        root = staging_root(platform, key, what)
        root.mkdir(parents=True, exist_ok=True)
        return cls(platform, namespace, root, key)

    def put(self, src: Path, rel: str) -> Path:
        """Copy a file or folder to ROOT/rel; its path as the job sees it."""
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
        return dest

    def write(self, rel: str, text: str) -> Path:
        """Write a text file (a job's configuration) to ROOT/rel."""
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        return dest

    def run(
        self,
        *,
        name_prefix: str,
        job: Literal["train", "index", "mine"],
        script: str,
        args: Sequence[object],
        workers: int,
        worker_gpus: int,
        timeout_s: float,
        name: str = "",
    ) -> tuple[str, dict[str, Any]]:
        """Submit `python -m crops.ray_jobs.<script> ARGS` and wait: (the job's name, its final
        status). A retried task makes a new RayJob (the name ends in the time)."""
        attempt = f"{int(time.time()) % 100_000:05d}"
        spec = RayJobSpec(
            name=name or f"{name_prefix}-{self.key[:8]}-{attempt}",
            namespace=self.namespace,
            job=job,
            entrypoint=entrypoint(script, args),
            workers=workers,
            worker_gpus=worker_gpus,
        )
        status = submit_and_wait(spec, timeout_s=timeout_s, platform=self.platform)
        return spec.name, status

    def fetch(self, rel: str, dest: Path, ignore: Sequence[str] = ()) -> None:
        """Copy the job's output folder ROOT/rel to the task's output `dest`."""
        shutil.copytree(
            self.root / rel, dest, ignore=shutil.ignore_patterns(*ignore), dirs_exist_ok=True
        )


__all__ = ["StagedRayJob"]
