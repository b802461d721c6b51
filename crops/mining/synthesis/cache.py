"""The SQLite cache of validated replies, and the lookup every LLM backend starts with.

Owns :class:`ReplyCache` (keyed by model, prompt version, videos per query and query; only
successes are stored, so a rerun pays only for what failed), :func:`open_cache` and
:func:`look_up`: the queries that need no model (invalid input, quarantined at once; cache
hits) and the ones left to send, shared by the HTTP client and the batch engines.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crops.mining.synthesis.base import Outcome
from crops.mining.synthesis.reply import SyntheticVideo, input_failure


class ReplyCache:
    """sqlite cache of validated videos; only successes are stored so reruns retry failures.

    Used from one thread only (the one that runs the event loop), as sqlite3 requires.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS synthesis (key TEXT PRIMARY KEY, model TEXT, "
            "prompt_version TEXT, per_query INTEGER, query TEXT, videos TEXT, created REAL)"
        )
        self.db.commit()

    @staticmethod
    def key(model: str, prompt_version: str, per_query: int, query: str) -> str:
        raw = json.dumps([model, prompt_version, per_query, query], ensure_ascii=False)
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def get(self, key: str) -> list[SyntheticVideo] | None:
        row = self.db.execute("SELECT videos FROM synthesis WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return [SyntheticVideo.model_validate(v) for v in json.loads(row[0])]
        except (ValueError, TypeError):  # stale or corrupt entry: treat as a miss
            return None

    def put(self, key: str, model: str, version: str, per_query: int, query: str, videos) -> None:
        payload = json.dumps([v.model_dump() for v in videos], ensure_ascii=False)
        self.db.execute(
            "INSERT OR REPLACE INTO synthesis VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key, model, version, per_query, query, payload, time.time()),
        )
        self.db.commit()

    def store(self, model: str, prompt_version: str, per_query: int, query: str, videos) -> None:
        """Put `query`'s videos under the key of (model, prompt_version, per_query, query)."""
        key = self.key(model, prompt_version, per_query, query)
        self.put(key, model, prompt_version, per_query, query, videos)

    def close(self) -> None:
        self.db.close()


@contextmanager
def open_cache(path: str | Path | None) -> Iterator[ReplyCache | None]:
    """The cache at `path` (None: no cache), closed on the way out."""
    cache = ReplyCache(path) if path is not None else None
    try:
        yield cache
    finally:
        if cache is not None:
            cache.close()


def look_up(
    unique: list[str],
    cache: ReplyCache | None,
    *,
    model: str,
    prompt_version: str,
    per_query: int,
) -> tuple[dict[str, Outcome], list[str]]:
    """(outcome per query, the queries left to send, in order): an invalid query gets its
    Failure and is never sent, a cache hit its cached videos; the rest an empty Outcome."""
    outcomes: dict[str, Outcome] = {}
    todo: list[str] = []
    for q in unique:
        bad = input_failure(q)
        hit = None
        if bad is None and cache is not None:
            hit = cache.get(ReplyCache.key(model, prompt_version, per_query, q))
        if bad is not None:
            outcomes[q] = Outcome(failure=bad)
        elif hit is not None:
            outcomes[q] = Outcome(videos=hit, cached=True)
        else:
            outcomes[q] = Outcome()
            todo.append(q)
    return outcomes, todo
