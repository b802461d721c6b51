"""Batch synthesis with an in-process engine: in this process, or on Ray Data actors.

Owns :class:`BatchSynthesis` (the backend), :class:`SynthesisActor` (the Ray Data callable),
:func:`synthesize_batch` (generate, parse and retry one batch where the engine runs) and
:func:`vllm_offline`.

On a cluster, synthesis at scale is offline batch inference: the queries become a Ray Dataset
and `map_batches` sends them to a pool of actors, each holding one LLM engine on its own GPU
(`engines`), the way Ray Data's batch-inference guide does it. The RayJob's
driver runs on the head node, which has no GPU and never loads a model.

Each batch is synthesised, parsed and retried where the engine runs (`synthesize_batch`), so a
model is loaded once per actor and only small outcome rows come back. The driver does what
needs one place: the cache (`cache.look_up`), the per-query cap, de-duplication and the
report (`base.assemble`), each shared with the HTTP client.

- `BatchSynthesis(spec, runner="local")`: the engine in this process (a GPU mine task);
- `BatchSynthesis(spec, runner="ray", actors=N, gpus_per_actor=1)`: Ray Data over N actors.
  With the llama.cpp engine and `gpus_per_actor=0` the same path runs on CPU actors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from crops.mining.synthesis.base import Progress, SynthesisResult, Tracker, assemble, unique_queries
from crops.mining.synthesis.cache import look_up, open_cache
from crops.mining.synthesis.engines import Engine, EngineSpec, build_engine, require
from crops.mining.synthesis.reply import (
    Failure,
    SyntheticVideo,
    new_reply_counters,
    parse_completions,
)

log = logging.getLogger(__name__)


def synthesize_batch(
    engine: Engine, queries: list[str], per_query: int, seed: int, max_retries: int
) -> list[dict[str, Any]]:
    """One outcome row per query: videos (JSON), failure, attempts, replies and valid replies.

    Queries with no valid reply are resubmitted with a new seed, up to `max_retries` times.
    """
    rows = {q: {"query": q, "videos": "[]", "reason": None, "detail": None, "attempts": 0,
                "counters": new_reply_counters()} for q in queries}  # fmt: skip
    todo = list(queries)
    for attempt in range(max_retries + 1):
        if not todo:
            break
        retry = []
        for q, completions in zip(
            todo, engine.generate(todo, per_query, seed + attempt), strict=True
        ):
            row = rows[q]
            row["attempts"] = attempt + 1
            got = parse_completions(q, completions, row["counters"])
            if isinstance(got, Failure):
                row["reason"], row["detail"] = got.reason, got.detail
                retry.append(q)
            else:
                row["videos"] = json.dumps([v.model_dump() for v in got], ensure_ascii=False)
                row["reason"] = row["detail"] = None
        todo = retry
    out = list(rows.values())
    for r in out:  # plain columns for Ray Data
        r["counters"] = json.dumps(r["counters"])
    return out


class SynthesisActor:
    """A Ray Data callable class: loads the engine once, then synthesises batch after batch."""

    def __init__(self, spec: dict[str, Any], per_query: int, seed: int, max_retries: int) -> None:
        self.engine = build_engine(EngineSpec.model_validate(spec))
        self.per_query, self.seed, self.max_retries = per_query, seed, max_retries

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = synthesize_batch(
            self.engine, [str(q) for q in batch["query"]], self.per_query, self.seed,
            self.max_retries,
        )  # fmt: skip
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


class BatchSynthesis:
    """Synthesis through an in-process engine, here or on Ray Data actors."""

    is_llm = True

    def __init__(
        self,
        spec: EngineSpec,
        *,
        runner: Literal["local", "ray"] = "ray",
        actors: int = 1,
        gpus_per_actor: float = 1.0,
        cpus_per_actor: float = 1.0,
        batch_size: int = 16,
        seed: int = 0,
        max_retries: int = 2,
        cache_path: str | Path | None = None,
    ) -> None:
        if actors < 1 or batch_size < 1 or max_retries < 0:
            raise ValueError("actors and batch_size must be >= 1, max_retries >= 0")
        if gpus_per_actor < 0 or cpus_per_actor <= 0:
            raise ValueError("gpus_per_actor must be >= 0 and cpus_per_actor > 0")
        if spec.engine == "vllm" and runner == "ray" and gpus_per_actor == 0:
            raise ValueError("the vllm engine needs a GPU per actor (gpus_per_actor > 0)")
        if runner == "local":
            require(spec.engine)  # actors check for themselves: the head may not have it
        if runner == "ray" and spec.engine == "llama.cpp" and spec.threads is None:
            # llama.cpp's threads spin at barriers: more threads than the actor's CPUs made a
            # reply 17x slower here (166 s against 9.5 s with one thread, beside a busy core)
            spec = spec.model_copy(update={"threads": max(1, int(cpus_per_actor))})
        self.spec, self.runner = spec, runner
        self.actors, self.gpus_per_actor, self.cpus_per_actor = (
            actors,
            gpus_per_actor,
            cpus_per_actor,
        )
        self.batch_size, self.seed, self.max_retries = batch_size, seed, max_retries
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.name = (
            f"{spec.engine} batch ({'Ray Data actors' if runner == 'ray' else 'in process'})"
        )
        self._engine: Engine | None = None

    @property
    def model(self) -> str:
        return self.spec.model

    def _rows(self, todo: list[str], per_query: int):
        """Outcome rows as they arrive: from this process's engine or from the actors."""
        if self.runner == "local":
            if self._engine is None:  # loading weights takes the time: once per backend
                self._engine = build_engine(self.spec)
            for start in range(0, len(todo), self.batch_size):
                yield from synthesize_batch(
                    self._engine, todo[start : start + self.batch_size], per_query, self.seed,
                    self.max_retries,
                )  # fmt: skip
            return
        import ray.data

        ds = ray.data.from_items([{"query": q} for q in todo]).map_batches(
            SynthesisActor,
            fn_constructor_kwargs={
                "spec": self.spec.model_dump(),
                "per_query": per_query,
                "seed": self.seed,
                "max_retries": self.max_retries,
            },
            batch_size=self.batch_size,
            concurrency=self.actors,
            num_gpus=self.gpus_per_actor,
            num_cpus=self.cpus_per_actor,
            batch_format="numpy",
        )
        yield from ds.iter_rows()

    def synthesize(
        self, queries: Sequence[str], per_query: int = 1, *, progress: Progress | None = None
    ) -> SynthesisResult:
        if per_query < 1:
            raise ValueError(f"per_query must be >= 1, got {per_query}")
        started = time.perf_counter()
        unique = unique_queries(queries)
        tracker = Tracker(len(unique), progress)
        version = self.spec.prompt_version
        replies, requests = new_reply_counters(), 0
        with open_cache(self.cache_path) as cache:
            outcomes, todo = look_up(
                unique, cache, model=self.model, prompt_version=version, per_query=per_query
            )
            tracker.advance(len(unique) - len(todo))
            log.info("synthesis %s: %d queries to generate", self.name, len(todo))
            for row in self._rows(todo, per_query) if todo else ():
                q = str(row["query"])
                oc = outcomes[q]
                oc.attempts = int(row["attempts"])
                requests += oc.attempts
                c = json.loads(row["counters"])
                for k in ("replies", "json_valid", "valid"):
                    replies[k] += c[k]
                for k, v in c["reasons"].items():
                    replies["reasons"][k] += v
                videos = [SyntheticVideo.model_validate(v) for v in json.loads(row["videos"])]
                if videos:
                    oc.videos = videos
                    if cache is not None:
                        cache.store(self.model, version, per_query, q, videos)
                else:
                    oc.failure = Failure(str(row["reason"]), str(row["detail"]))
                tracker.advance()
        result = assemble(
            self.name,
            self.model,
            version,
            queries,
            unique,
            outcomes,
            requests_sent=requests,
            latencies=[],
            replies=replies,
            started=started,
            per_query=per_query,
        )
        result.stats["engine"] = self.spec.engine
        if self.runner == "ray":
            result.stats["actors"] = {
                "count": self.actors,
                "gpus_each": self.gpus_per_actor,
                "cpus_each": self.cpus_per_actor,
                "batch_size": self.batch_size,
            }
        return result


def vllm_offline(
    model: str, *, cache_path: str | Path | None = None, seed: int = 0, **engine_kwargs: Any
) -> BatchSynthesis:
    """vLLM's engine in this process: the KFP mine task on a GPU node."""
    spec = EngineSpec(engine="vllm", model=model, engine_kwargs=engine_kwargs)
    return BatchSynthesis(spec, runner="local", seed=seed, cache_path=cache_path)
