"""RayJob entry point for the data engine with batch LLM synthesis: the same code path as
`crops mine`.

On a GPU RayCluster the synthesis step can run vLLM's in-process engine instead of calling a
server (install the `vllm` extra in the CUDA image):

    python /app/ray_jobs/mine.py --world /artifacts/world --out /artifacts/mined \
        --llm-backend vllm-offline --llm-model Qwen/Qwen2.5-7B-Instruct

With `--llm-endpoint URL --llm-model M` it calls a vLLM server instead (key in
CROPS_LLM_API_KEY, from a Secret).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crops.cli import app


def main(argv: Sequence[str] | None = None) -> int:
    """Run `crops mine ARGV`; the exit status (2: bad input) instead of leaving the process."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(["mine", *args], standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
