"""Synthesis without an LLM, from the simulated world's own knowledge: a named diagnostic.

`KnowledgeBackend` writes virtual video metadata for a query the way the one-shot LLM prompt
asks for, but from the taxonomy the simulator drew its videos from: the query's (dominant)
intent, canonical and colloquial words of its facet and topic, and the intent's other surface
forms as related queries. It is NOT an LLM, and every report says so. It reads the
simulator's hidden truth (the form's interpretation), so it is never a default: it is the upper
bound a real LLM's synthesis is compared against (`crops mine --llm-backend knowledge`, the
experiment's oracle row).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from crops.mining.synthesis.base import SynthesisResult
from crops.mining.synthesis.reply import SyntheticVideo
from crops.world import taxonomy as tx
from crops.world.world import World

NAME = "knowledge (simulator world knowledge, not an LLM)"


class KnowledgeBackend:
    """Composes metadata from the world's taxonomy; deterministic per (seed, query, i)."""

    name = NAME
    is_llm = False

    def __init__(self, world: World, seed: int = 0) -> None:
        self.world, self.seed = world, seed

    def _rng(self, query: str, i: int) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}|{query}|{i}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def _one(self, query: str, intent: int, i: int) -> SyntheticVideo:
        w = self.world
        rng = self._rng(query, i)
        topic = tx.TOPICS[w.intents.topic[intent]]
        facet = topic.facets[w.intents.facet[intent]]

        def pick(pool: Sequence[str], n: int) -> list[str]:
            return [str(x) for x in rng.choice(list(pool), size=min(n, len(pool)), replace=False)]

        words = pick(facet.words, 2) + pick(facet.colloquial, 2) + pick(topic.words, 1)
        words += pick(topic.colloquial, 1) + pick(tx.FILLER, 2)
        rng.shuffle(words)
        related = [
            w.forms.text[f]
            for k in ("head", "refined", "colloquial")
            if (f := w.forms.by_intent.get((intent, k))) is not None and w.forms.text[f] != query
        ]
        return SyntheticVideo(
            query=query,
            caption=" ".join(words),
            tags=pick(facet.words, 1) + pick(facet.colloquial, 1) + pick(topic.words, 1),
            cover_text=" ".join(pick(facet.colloquial, 2)),
            keywords=pick(facet.words, 2) + pick(facet.colloquial, 2),
            related_queries=related,
        )

    def synthesize(
        self,
        queries: Sequence[str],
        per_query: int = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> SynthesisResult:
        t0 = time.perf_counter()
        videos, quarantine = [], []
        unique = list(dict.fromkeys(queries))
        for n, q in enumerate(unique, 1):
            f = self.world.form_id(q)
            if f is None:
                quarantine.append(
                    {
                        "query": q,
                        "reason": "invalid",
                        "detail": "query unknown to the world's "
                        "knowledge (use an LLM endpoint for real queries)",
                        "attempts": 1,
                    }
                )
                continue
            intent = int(self.world.forms.interpretation[f])
            videos.extend(self._one(q, intent, i) for i in range(per_query))
            if progress:
                progress(n, len(unique))
        failed: dict[str, int] = {}
        for item in quarantine:
            failed[item["reason"]] = failed.get(item["reason"], 0) + 1
        stats = {
            "backend": self.name,
            "is_llm": False,
            "model": None,
            "prompt_version": None,
            "queries": len(unique),
            "requests_sent": 0,
            "cache_hits": 0,
            "retries": 0,
            "succeeded": len(unique) - len(quarantine),
            "failed_by_reason": failed,
            "duplicates_dropped": 0,
            "latency_ms": {"p50": 0.0, "p99": 0.0},
            "wall_s": time.perf_counter() - t0,
        }
        return SynthesisResult(videos=videos, quarantine=quarantine, stats=stats)
