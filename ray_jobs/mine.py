"""RayJob entry point for the data engine with batch LLM synthesis: the same code path as
`crops mine`.

On a GPU cluster, synthesis is Ray Data batch inference: the queries go through `map_batches`
to actors each holding vLLM's engine on a GPU (`crops.mining.synthesis.ray_batch`); the driver,
on the GPU-less head, never loads a model (install the `vllm` extra in the CUDA image):

    python -m crops.ray_jobs.mine --world /artifacts/world --out /artifacts/mined \
        --llm-backend ray-batch --llm-model Qwen/Qwen2.5-7B-Instruct --llm-actors 4

`--llm-backend vllm-offline` (vLLM in the driver) is turned into ray-batch here for that
reason. With `--llm-engine llama.cpp --llm-gpus-per-actor 0` the actors run a GGUF on CPU
(the packaged SmolLM2-135M by default). With `--llm-endpoint URL --llm-model M`, or with no
LLM option and CROPS_LLM_ENDPOINT (and CROPS_LLM_MODEL) set, it calls a vLLM server instead (key
in CROPS_LLM_API_KEY, from a Secret): the settings resolve as for `crops mine` and the mine
component (`crops.mining.synthesis.factory`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from crops.ray_jobs import run


def main(argv: Sequence[str] | None = None) -> int:
    """`crops mine ARGV`, with in-driver vLLM moved onto actors; the exit status (2: bad input)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(args):
        if a == "--llm-backend=vllm-offline" or (
            a == "vllm-offline" and i > 0 and args[i - 1] == "--llm-backend"
        ):
            print("crops.ray_jobs.mine: vllm-offline runs on Ray Data GPU actors (ray-batch)")
            args[i] = "--llm-backend=ray-batch" if a.startswith("--") else "ray-batch"
    return run("mine", args)


if __name__ == "__main__":
    sys.exit(main())
