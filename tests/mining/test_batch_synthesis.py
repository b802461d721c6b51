"""Batch synthesis with in-process engines (crops.mining.synthesis.ray_batch, .engines).

The llama.cpp engine runs the real packaged SmolLM2-135M here (slow); the Ray Data path with
that engine on CPU actors is tested as a submitted RayJob in test_raysubmit.py. Fault injection
uses `FakeBrokenEngine`, a named fake whose replies are broken on purpose.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest

from crops.mining.llm_server import packaged_model
from crops.mining.synthesis import REASONS, VIDEO_JSON_SCHEMA
from crops.mining.synthesis.engines import EngineSpec, completion_seed, vllm_sampling_params
from crops.mining.synthesis.ray_batch import BatchSynthesis, synthesize_batch, vllm_offline


def _reply(caption: str) -> str:
    fields = {"tags": ["t"], "cover_text": "", "keywords": ["k"], "related_queries": []}
    return json.dumps({"caption": caption, **fields})


class FakeBrokenEngine:
    """A fake engine for fault injection: the first attempt for each query gets the broken
    reply its query names, later attempts a valid one unless the query says 'always'."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, queries, per_query, seed):
        self.calls.append((list(queries), seed))
        first = len(self.calls) == 1
        out = []
        for q in queries:
            if q.startswith("truncated") and (first or "always" in q):
                reply = ('{"caption": "half a', "length")
            elif q.startswith("empty") and (first or "always" in q):
                reply = ("", "stop")
            elif q.startswith("echo") and (first or "always" in q):
                reply = (_reply(q), "stop")
            else:
                reply = (_reply(f"a video about {q} with new words"), "stop")
            out.append([reply] * per_query)
        return out


def test_broken_replies_are_retried_then_quarantined_with_their_reason() -> None:
    engine = FakeBrokenEngine()
    rows = synthesize_batch(
        engine, ["fine", "truncated once", "empty always", "echo always"], 2, seed=5, max_retries=2
    )
    by = {r["query"]: r for r in rows}
    assert by["fine"]["attempts"] == 1 and len(json.loads(by["fine"]["videos"])) == 2
    assert by["truncated once"]["attempts"] == 2 and by["truncated once"]["reason"] is None
    assert by["empty always"]["reason"] == "empty" and by["empty always"]["attempts"] == 3
    assert by["echo always"]["reason"] == "echo" and by["echo always"]["videos"] == "[]"
    assert all(r["reason"] in (None, *REASONS) for r in rows)
    # retries carry only the failed queries, each attempt with a new seed
    assert [(len(q), s) for q, s in engine.calls] == [(4, 5), (3, 6), (2, 7)]
    echo = json.loads(by["echo always"]["counters"])
    assert echo["replies"] == 6 and echo["valid"] == 0 and echo["json_valid"] == 6
    assert echo["reasons"]["echo"] == 6
    trunc = json.loads(by["truncated once"]["counters"])
    assert trunc["replies"] == 4 and trunc["valid"] == 2 and trunc["reasons"]["truncated"] == 2


def test_engine_spec_and_backend_refuse_bad_settings(tmp_path) -> None:
    with pytest.raises(ValueError, match="GGUF model file .* not found"):
        EngineSpec(engine="llama.cpp", model=str(tmp_path / "none.gguf"))
    with pytest.raises(ValueError, match="unknown prompt version"):
        EngineSpec(model="m", prompt_version="synthesis_v99")
    with pytest.raises(ValueError, match="needs a GPU per actor"):
        BatchSynthesis(EngineSpec(model="m"), runner="ray", gpus_per_actor=0)
    with pytest.raises(ValueError, match="actors and batch_size"):
        BatchSynthesis(EngineSpec(model="m"), runner="ray", actors=0)


def test_vllm_in_process_without_vllm_is_a_clear_import_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # absent, even where vllm is installed
    with pytest.raises(ImportError, match=r"crops\[vllm\]"):
        vllm_offline("Qwen/Qwen2.5-0.5B-Instruct")
    # the Ray runner does not need vLLM in the driver (the head): the actors load it
    BatchSynthesis(EngineSpec(model="Qwen/Qwen2.5-0.5B-Instruct"), runner="ray")


def test_vllm_params_use_structured_outputs(monkeypatch) -> None:
    """SamplingParams as the pinned vLLM (0.32) takes them: StructuredOutputsParams(json=...)
    in `structured_outputs` (no guided_json, no GuidedDecodingParams)."""

    @dataclasses.dataclass
    class StructuredOutputsParams:  # vllm.sampling_params.StructuredOutputsParams' fields
        json: str | dict | None = None
        regex: str | None = None
        choice: list[str] | None = None
        grammar: str | None = None
        json_object: bool | None = None

    @dataclasses.dataclass
    class SamplingParams:  # the fields the engine may set, by their vLLM 0.32 names
        n: int = 1
        temperature: float = 1.0
        seed: int | None = None
        max_tokens: int | None = 16
        structured_outputs: StructuredOutputsParams | None = None

    vllm = types.ModuleType("vllm")
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.SamplingParams = SamplingParams
    sampling.StructuredOutputsParams = StructuredOutputsParams
    vllm.sampling_params = sampling
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    params = vllm_sampling_params(EngineSpec(model="m", max_tokens=300), 3, seed=7)
    assert params == SamplingParams(
        n=3,
        temperature=0.7,
        seed=7,
        max_tokens=300,
        structured_outputs=StructuredOutputsParams(json=VIDEO_JSON_SCHEMA),
    )


def test_completion_seeds_do_not_depend_on_the_batch() -> None:
    assert completion_seed(0, "jaguar", 1) == completion_seed(0, "jaguar", 1)
    assert len({completion_seed(s, q, i) for s in (0, 1) for q in "ab" for i in (0, 1)}) == 8


def test_the_rayjob_entry_point_moves_vllm_off_the_driver(monkeypatch) -> None:
    import crops.ray_jobs.mine as job

    seen = []
    monkeypatch.setattr(job, "run", lambda command, args: seen.append((command, args)) or 0)
    assert job.main(["--world", "w", "--llm-backend", "vllm-offline", "--llm-model", "m"]) == 0
    assert job.main(["--llm-backend=vllm-offline"]) == 0
    assert seen == [
        ("mine", ["--world", "w", "--llm-backend", "ray-batch", "--llm-model", "m"]),
        ("mine", ["--llm-backend=ray-batch"]),
    ]


@pytest.mark.slow
def test_llama_cpp_engine_in_process_synthesises_with_the_real_model(tmp_path) -> None:
    spec = EngineSpec(engine="llama.cpp", model=str(packaged_model()), threads=1)
    backend = BatchSynthesis(
        spec, runner="local", batch_size=2, max_retries=1, cache_path=tmp_path / "c.sqlite"
    )
    queries = ["jaguar", "python loop tutorial", "jaguar"]
    result = backend.synthesize(queries, per_query=1)
    s = result.stats
    assert s["model"] == str(packaged_model()) and s["engine"] == "llama.cpp"
    assert s["unique_queries"] == 2 and s["replies"] >= 2
    assert s["succeeded"] + s["failed"] == 2
    assert 0 <= s["valid_reply_rate"] <= 1
    for v in result.videos:
        assert v.query in queries and v.caption
    for q in result.quarantine:
        assert q["reason"] in REASONS
    # a second run is served from the cache without loading the model
    again = BatchSynthesis(spec, runner="local", cache_path=tmp_path / "c.sqlite")
    r2 = again.synthesize(queries, per_query=1)
    assert r2.stats["cache_hits"] == s["succeeded"]
    if s["failed"] == 0:
        assert again._engine is None
