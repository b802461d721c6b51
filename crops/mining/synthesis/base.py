"""What every synthesis backend returns, and the one place a result is assembled.

Owns :class:`SynthesisResult`, the :class:`SynthesisBackend` protocol mining calls,
:func:`assemble` (input order, the per-query cap, caption de-duplication, quarantine rows and
the stats every LLM backend reports), the per-query :class:`Outcome` it assembles from, the
progress :class:`Tracker`, and :class:`NoSynthesis`, the clearly named backend without an LLM.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crops.mining.synthesis.reply import REASONS, Failure, SyntheticVideo, clip

log = logging.getLogger(__name__)


@dataclass
class SynthesisResult:
    """Videos in input-query order, one quarantine row per failed query, and the step's report."""

    videos: list[SyntheticVideo]
    quarantine: list[dict[str, Any]]
    stats: dict[str, Any]


class SynthesisBackend(Protocol):
    """What mining calls: every backend (LLM or not) returns a SynthesisResult."""

    name: str
    is_llm: bool

    def synthesize(
        self,
        queries: Sequence[str],
        per_query: int = 1,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> SynthesisResult: ...


Progress = Callable[[int, int], None]


@dataclass
class Outcome:
    """What became of one query: its videos, or the Failure that quarantines it."""

    videos: list[SyntheticVideo] = field(default_factory=list)
    failure: Failure | None = None
    attempts: int = 0
    cached: bool = False
    skipped: bool = False  # not sent: the time budget was spent (counted, not quarantined)


def unique_queries(queries: Sequence[str]) -> list[str]:
    """The distinct queries in first-seen order; anything but a sequence of str is refused."""
    if isinstance(queries, str | bytes):
        raise TypeError("queries must be a sequence of strings, not a single string")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] is {type(q).__name__}, expected str")
    return list(dict.fromkeys(queries))


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))  # nearest rank
    return round(sorted_values[k], 3)


def _caption_key(caption: str) -> str:
    return " ".join(caption.casefold().split())


def assemble(
    backend: str,
    model: str | None,
    prompt_version: str | None,
    queries: Sequence[str],
    unique: list[str],
    outcomes: dict[str, Outcome],
    *,
    requests_sent: int,
    latencies: list[float],
    replies: dict[str, Any] | None = None,
    started: float,
    per_query: int = 1,
) -> SynthesisResult:
    """One place for ordering, the per-query cap, caption de-duplication (per query),
    quarantine rows and stats."""
    videos: list[SyntheticVideo] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    dropped = 0
    failed = dict.fromkeys(REASONS, 0)
    skipped = 0
    for q in unique:
        oc = outcomes[q]
        if oc.skipped:
            skipped += 1
            continue
        if oc.failure is not None and not oc.videos:
            failed[oc.failure.reason] += 1
            quarantine.append(
                {
                    "query": q,
                    "reason": oc.failure.reason,
                    "detail": clip(oc.failure.detail),
                    "attempts": oc.attempts,
                }
            )
            continue
        for v in oc.videos[: max(1, per_query)]:
            key = (v.query, _caption_key(v.caption))  # the same caption may serve two queries
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            videos.append(v)
    lat = sorted(latencies)
    stats = {
        "backend": backend,
        "is_llm": True,
        "model": model,
        "prompt_version": prompt_version,
        "queries": len(queries),
        "unique_queries": len(unique),
        "requests_sent": requests_sent,
        "cache_hits": sum(1 for q in unique if outcomes[q].cached),
        "retries": sum(max(0, o.attempts - 1) for o in outcomes.values()),
        "succeeded": sum(1 for q in unique if outcomes[q].videos),
        "failed": len(quarantine),
        "failed_by_reason": failed,
        "skipped_for_budget": skipped,
        "videos": len(videos),
        "duplicates_dropped": dropped,
        "latency_ms": {"p50": _percentile(lat, 0.50), "p99": _percentile(lat, 0.99)},
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if replies is not None:  # the model's replies (HTTP 200), JSON-valid and usable
        n = replies["replies"]
        stats["replies"] = n
        stats["json_valid_replies"] = replies["json_valid"]
        stats["json_valid_rate"] = round(replies["json_valid"] / n, 4) if n else None
        stats["valid_replies"] = replies["valid"]
        stats["valid_reply_rate"] = round(replies["valid"] / n, 4) if n else None
        stats["reply_failures_by_reason"] = {k: v for k, v in replies["reasons"].items() if v}
    stats["videos_per_s"] = round(len(videos) / stats["wall_s"], 4) if stats["wall_s"] else None
    log.info(
        "synthesis %s: %d/%d queries succeeded, %d videos, %d cached, %d quarantined %s",
        backend,
        stats["succeeded"],
        len(unique),
        len(videos),
        stats["cache_hits"],
        len(quarantine),
        {k: v for k, v in failed.items() if v},
    )
    return SynthesisResult(videos, quarantine, stats)


class Tracker:
    """Progress callback plus a log line about every 10 %."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self.step = max(1, total // 10)

    def advance(self, n: int = 1) -> None:
        if n <= 0:
            return
        before, self.done = self.done, self.done + n
        if self.progress is not None:
            self.progress(self.done, self.total)
        if self.done // self.step != before // self.step or self.done == self.total:
            log.info("synthesis progress: %d/%d queries", self.done, self.total)


# ----------------------------------------------------------------------------- no LLM


class NoSynthesis:
    """The non-LLM fallback when no endpoint is set: no videos, and stats that say so."""

    name = "none"
    is_llm = False

    def synthesize(
        self, queries: Sequence[str], per_query: int = 1, *, progress: Progress | None = None
    ) -> SynthesisResult:
        unique = unique_queries(queries)
        if progress is not None:
            progress(len(unique), len(unique))
        log.info("synthesis off (backend 'none'): no LLM endpoint configured, 0 videos")
        return SynthesisResult(
            videos=[],
            quarantine=[],
            stats={
                "backend": self.name,
                "is_llm": False,
                "synthesis": "off",
                "model": None,
                "prompt_version": None,
                "queries": len(queries),
                "unique_queries": len(unique),
                "requests_sent": 0,
                "cache_hits": 0,
                "retries": 0,
                "succeeded": 0,
                "failed": 0,
                "failed_by_reason": dict.fromkeys(REASONS, 0),
                "videos": 0,
                "duplicates_dropped": 0,
                "latency_ms": {"p50": None, "p99": None},
                "wall_s": 0.0,
            },
        )
