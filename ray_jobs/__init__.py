"""RayJob entry points: `python -m crops.ray_jobs.<job> ARGS` as a RayJob's entrypoint.

`train` runs `crops train`, `build_index` runs `crops index` and `mine` runs `crops mine` on the
head node of the RayJob's cluster, where Ray is already up (the job's driver has RAY_ADDRESS), so
`ray.init()` joins that cluster and the work spreads over its nodes. They live in the installed
package, so the entrypoint is the same in every image and on any Ray cluster, whatever the
working directory; `crops.k8s.rayjob.entrypoint` builds the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run(command: str, argv: Sequence[str] | None = None) -> int:
    """Run `crops COMMAND ARGV`; its exit status (2: bad input) instead of leaving the process."""
    from crops.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app([command, *args], standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
