"""RayJob entry point for the data engine with batch LLM synthesis: the same code path as
`crops mine`.

On a GPU cluster the synthesis step can run vLLM's in-process engine instead of calling a server
(install the `vllm` extra in the CUDA image):

    python -m crops.ray_jobs.mine --world /artifacts/world --out /artifacts/mined \
        --llm-backend vllm-offline --llm-model Qwen/Qwen2.5-7B-Instruct

With `--llm-endpoint URL --llm-model M` it calls a vLLM server instead (key in
CROPS_LLM_API_KEY, from a Secret).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crops.ray_jobs import run


def main(argv: Sequence[str] | None = None) -> int:
    """`crops mine ARGV`; the exit status (2: bad input)."""
    return run("mine", argv)


if __name__ == "__main__":
    sys.exit(main())
