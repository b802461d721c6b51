"""In-process LLM engines for batch synthesis: vLLM on a GPU, llama.cpp on a CPU.

Owns :class:`EngineSpec`, the :class:`Engine` protocol, the two engines and
:func:`build_engine`.

An engine turns a batch of queries into raw completions (text and finish reason), `per_query`
of them each, constrained to the reply schema. It knows nothing of parsing, retries or caching:
`ray_batch` does that for every engine alike, with the same `parse_reply` the
HTTP client uses. `EngineSpec` is what travels to a Ray actor; the actor builds the engine from
it once (loading weights takes the time) and reuses it for every batch.

- ``vllm``: `vllm.LLM` with `SamplingParams(n=per_query, structured_outputs=...)`, the pinned
  vLLM's structured-output parameter (`guided_json` and `GuidedDecodingParams` are gone).
- ``llama.cpp``: `llama_cpp.Llama` on a GGUF file with `response_format` json_object + schema;
  one completion per call (llama.cpp has no `n`), each with its own seed. It runs the packaged
  SmolLM2-135M on CPU actors, which is how the Ray Data path is tested without a GPU.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crops.mining.synthesis.prompt import PROMPT_VERSION, load_prompt, render_messages
from crops.mining.synthesis.reply import VIDEO_JSON_SCHEMA

#: A completion: its text and the engine's finish reason ("stop", "length", ...).
Completion = tuple[str | None, str | None]

ENGINES = ("vllm", "llama.cpp")


class EngineSpec(BaseModel):
    """Everything an actor needs to build its engine and sample; plain data, so Ray ships it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["vllm", "llama.cpp"] = "vllm"
    model: str = Field(min_length=1, description="vllm: HF name or path; llama.cpp: GGUF path")
    prompt_version: str = PROMPT_VERSION
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(320, ge=16, le=4096)
    n_ctx: int = Field(2048, ge=256, description="llama.cpp's context window")
    threads: int | None = Field(None, ge=1, description="llama.cpp's CPU threads (None: all)")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for vllm.LLM or Llama"
    )

    @model_validator(mode="after")
    def _model_exists(self) -> EngineSpec:
        if self.engine == "llama.cpp" and not Path(self.model).is_file():
            raise ValueError(f"llama.cpp engine: GGUF model file {self.model} not found")
        load_prompt(self.prompt_version)  # an unknown prompt fails here, not in an actor
        return self


class Engine(Protocol):
    def generate(self, queries: list[str], per_query: int, seed: int) -> list[list[Completion]]:
        """`per_query` completions for each query, in order."""
        ...


def require(engine: str) -> None:
    """Fail with the install line when the engine's package is missing."""
    try:
        if engine == "vllm":
            import vllm  # noqa: F401
        else:
            import llama_cpp  # noqa: F401
    except ImportError as e:
        extra = "crops[vllm]' in the CUDA image" if engine == "vllm" else "crops[llm]'"
        raise ImportError(
            f"the {engine} engine needs its package, which is not installed: pip install '{extra}"
        ) from e


def vllm_sampling_params(spec: EngineSpec, per_query: int, seed: int) -> Any:
    """The pinned vLLM's (0.32) sampling parameters: `structured_outputs` constrains the JSON
    (GuidedDecodingParams and SamplingParams.guided_decoding no longer exist there)."""
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    return SamplingParams(
        n=per_query,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        seed=seed,
        structured_outputs=StructuredOutputsParams(json=VIDEO_JSON_SCHEMA),
    )


class VllmEngine:
    """vLLM's in-process engine (the optional `crops[vllm]`, on a GPU)."""

    def __init__(self, spec: EngineSpec) -> None:
        require("vllm")
        import vllm

        self.spec, self.prompt = spec, load_prompt(spec.prompt_version)
        self.llm = vllm.LLM(model=spec.model, **spec.engine_kwargs)

    def generate(self, queries: list[str], per_query: int, seed: int) -> list[list[Completion]]:
        outs = self.llm.chat(
            [render_messages(q, self.prompt) for q in queries],
            vllm_sampling_params(self.spec, per_query, seed),
            use_tqdm=False,
        )
        return [[(c.text, getattr(c, "finish_reason", None)) for c in o.outputs] for o in outs]


class LlamaCppEngine:
    """llama.cpp's in-process engine (llama-cpp-python) on a GGUF file, on CPU."""

    def __init__(self, spec: EngineSpec) -> None:
        require("llama.cpp")
        from llama_cpp import Llama

        self.spec, self.prompt = spec, load_prompt(spec.prompt_version)
        self.llm = Llama(
            model_path=spec.model,
            n_ctx=spec.n_ctx,
            n_threads=spec.threads,
            verbose=False,
            **spec.engine_kwargs,
        )

    def generate(self, queries: list[str], per_query: int, seed: int) -> list[list[Completion]]:
        out: list[list[Completion]] = []
        for q in queries:
            got: list[Completion] = []
            for i in range(per_query):  # no `n` in llama.cpp: one call per completion
                reply = self.llm.create_chat_completion(
                    render_messages(q, self.prompt),
                    temperature=self.spec.temperature,
                    max_tokens=self.spec.max_tokens,
                    seed=completion_seed(seed, q, i),
                    response_format={"type": "json_object", "schema": VIDEO_JSON_SCHEMA},
                )
                choice = reply["choices"][0]
                got.append((choice["message"].get("content"), choice.get("finish_reason")))
            out.append(got)
        return out


def completion_seed(seed: int, query: str, i: int) -> int:
    """A per-(query, completion) seed, so a reply does not depend on how queries are batched."""
    h = hashlib.sha256(f"{seed}\0{i}\0{query}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def build_engine(spec: EngineSpec) -> Engine:
    """The engine a spec names (loads its weights: call once per process or actor)."""
    return VllmEngine(spec) if spec.engine == "vllm" else LlamaCppEngine(spec)
