"""Knowledge-level positives (docs/design.md section 1, perspective 3): LLM-synthesised videos.

An LLM, one-shot prompted as a short-video content expert, writes the metadata of a virtual
video (caption, tags, cover text, keywords, related queries) for a search query. These videos
become label-4 positives, reaching relevant content that no exposure log ever showed.

Backends:

- :class:`OpenAIChatBackend`: any OpenAI-compatible chat endpoint, first of all ``vllm serve``.
  (In-process engines, vLLM on GPU actors included, are in `crops.mining.batch_synthesis`.)
  Async with bounded concurrency, schema-constrained JSON output, retries with backoff, a
  sqlite cache (a rerun only pays for what failed) and a quarantine with one reason per failed
  query.
- :class:`VllmOfflineBackend`: vLLM's in-process engine for batch synthesis on a GPU node.
- :class:`NoSynthesis`: the clearly named non-LLM fallback when no endpoint is configured.

Both LLM backends run every reply through the one :func:`parse_reply`, so a reply is accepted
or rejected for the same reason whichever way it was produced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib.resources
import json
import logging
import math
import os
import re
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger("crops.mining.synthesis")

PROMPT_VERSION = "synthesis_v1"

#: Failure reasons of a quarantined query, in the order the stats report them.
REASONS = (
    "malformed",
    "truncated",
    "empty",
    "refused",
    "invalid",
    "echo",  # the caption only repeats the query's words: no knowledge added
    "example",  # the caption copies the prompt's one-shot example, unrelated to the query
    "language",  # written in another script than the query (Latin against CJK, say)
    "http_error",
    "timeout",
)

#: Same bound as crops.schema.MAX_QUERY_BYTES (kept local: this module needs no Arrow stack).
MAX_QUERY_BYTES = 1024

CAPTION_MAX, TAG_MAX, COVER_MAX, KEYWORD_MAX, RELATED_MAX, LIST_MAX = 300, 40, 100, 40, 100, 10


def _string_list(lo: int, item_max: int) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": item_max},
        "minItems": lo,
        "maxItems": LIST_MAX,
    }


#: JSON schema of one reply; sent for guided decoding so the server can only emit valid shapes.
VIDEO_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "minLength": 1, "maxLength": CAPTION_MAX},
        "tags": _string_list(1, TAG_MAX),
        "cover_text": {"type": "string", "minLength": 0, "maxLength": COVER_MAX},
        "keywords": _string_list(1, KEYWORD_MAX),
        "related_queries": _string_list(0, RELATED_MAX),
    },
    "required": ["caption", "tags", "cover_text", "keywords", "related_queries"],
    "additionalProperties": False,
}

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECTION_RE = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


# ----------------------------------------------------------------------------- prompt


def _prompt_dir():
    return importlib.resources.files("crops.mining").joinpath("prompts")


def available_prompts() -> list[str]:
    """Prompt versions shipped with the package (for error messages and CLIs)."""
    return sorted(
        p.name[: -len(".txt")] for p in _prompt_dir().iterdir() if p.name.endswith(".txt")
    )


def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The prompt template of `version`; versioned files so cached replies name their prompt."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"invalid prompt version {version!r}: expected a name like 'synthesis_v1'")
    res = _prompt_dir().joinpath(f"{version}.txt")
    if not res.is_file():
        raise ValueError(
            f"unknown prompt version {version!r}; available: {', '.join(available_prompts())}"
        )
    text = res.read_text(encoding="utf-8")
    _split_prompt(text, version)  # fail at load time, not at the first query
    return text


def _split_prompt(prompt: str, version: str = "prompt") -> tuple[str, str]:
    lines = prompt.splitlines()
    if lines and lines[0].startswith("#"):
        lines = lines[1:]  # the version comment is for humans, not for the model
    body = "\n".join(lines)
    parts = _SECTION_RE.split(body)
    # parts: [preamble, "system", text, "user", text]
    if len(parts) != 5 or parts[1] != "system" or parts[3] != "user" or parts[0].strip():
        raise ValueError(f"{version}: template needs a [system] section then a [user] section")
    system, user = parts[2].strip(), parts[4].strip()
    if user.count("{query}") != 1 or "{query}" in system:
        raise ValueError(f"{version}: the [user] section needs exactly one {{query}} placeholder")
    return system, user


def _encode_query(query: str) -> str:
    """JSON string literal with <, > and & escaped, so the query can never close its delimiter."""
    s = json.dumps(query, ensure_ascii=False)
    return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_messages(query: str, prompt: str) -> list[dict[str, str]]:
    """System and user chat messages for `query`.

    The query goes in as a JSON string literal between <query> markers, by plain replacement
    (no str.format), so braces, quotes, newlines or a fake closing marker in a query can neither
    break the template nor escape into the instructions.
    """
    system, user = _split_prompt(prompt)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user.replace("{query}", _encode_query(query), 1)},
    ]


# ----------------------------------------------------------------------------- reply model


def _clean(value: str, what: str, lo: int, hi: int) -> str:
    value = value.strip()
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise ValueError(f"{what} contains control characters")
    if len(value) < lo:
        raise ValueError(f"{what} is empty")
    if len(value) > hi:
        raise ValueError(f"{what} is longer than {hi} characters ({len(value)})")
    return value


def _clean_list(values: list[str], what: str, lo: int, item_max: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, v in enumerate(values):
        v = _clean(v, f"{what}[{i}]", 1, item_max)
        key = " ".join(v.casefold().split())
        if key not in seen:  # case-insensitive de-duplication, first spelling kept
            seen.add(key)
            out.append(v)
    if len(out) < lo:
        raise ValueError(f"{what} needs at least {lo} item(s)")
    if len(out) > LIST_MAX:
        raise ValueError(f"{what} has more than {LIST_MAX} items ({len(out)})")
    return out


class SyntheticVideo(BaseModel):
    """One validated synthetic video; the checks guard the training data, not the LLM's pride."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str = Field(min_length=1)
    caption: str
    tags: list[str]
    cover_text: str = ""
    keywords: list[str]
    related_queries: list[str] = Field(default_factory=list)

    @field_validator("caption")
    @classmethod
    def _caption(cls, v: str) -> str:
        return _clean(v, "caption", 1, CAPTION_MAX)

    @field_validator("cover_text")
    @classmethod
    def _cover(cls, v: str) -> str:
        return _clean(v, "cover_text", 0, COVER_MAX)

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return _clean_list(v, "tags", 1, TAG_MAX)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return _clean_list(v, "keywords", 1, KEYWORD_MAX)

    @field_validator("related_queries")
    @classmethod
    def _related(cls, v: list[str]) -> list[str]:
        return _clean_list(v, "related_queries", 0, RELATED_MAX)

    def text(self) -> str:
        """Caption, tags and cover text in one string: what the video tower encodes."""
        return " ".join(p for p in (self.caption, " ".join(self.tags), self.cover_text) if p)


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Failure:
    """Why a reply (or a whole query) produced no video; reason is one of REASONS."""

    reason: str
    detail: str
    retryable: bool = True


_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n?(.*?)\n?[ \t]*(```)?$", re.DOTALL)
_REFUSAL_RE = re.compile(
    r"^(i['\u2019]?m sorry|i am sorry|sorry|i can['\u2019]?t|i cannot|i can not|i won['\u2019]?t"
    r"|i am unable|i['\u2019]?m unable|as an ai)",
    re.IGNORECASE,
)


_WORD_RE = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w.casefold() for w in _WORD_RE.findall(text)}


def _script(text: str) -> str | None:
    """The text's main script among its letters: cjk, latin or other (None: no letters)."""
    counts = {"cjk": 0, "latin": 0, "other": 0}
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")):
            counts["cjk"] += 1
        elif name.startswith("LATIN"):
            counts["latin"] += 1
        else:
            counts["other"] += 1
    best = max(counts, key=counts.get)
    return best if counts[best] else None


#: A caption whose content words (4+ letters) are at least this share, and at least
#: EXAMPLE_MIN_SHARED, words of the prompt's example caption, for a query sharing none with it,
#: copies the example (small models do: SmolLM2-135M wrote the example's bike repair for
#: "dane tiktok shufle").
EXAMPLE_OVERLAP, EXAMPLE_MIN_SHARED = 0.5, 3


def _content_words(text: str) -> set[str]:
    return {w for w in _words(text) if len(w) >= 4 and not w.isdigit()}


@functools.cache
def _example_words(version: str = PROMPT_VERSION) -> tuple[frozenset[str], frozenset[str]]:
    """The one-shot example's caption content words, and every word of its reply (tags,
    keywords and related queries too), in prompt `version`; empty if it has none."""
    m = re.search(r"^Answer:\s*(\{.*\})\s*$", load_prompt(version), re.MULTILINE)
    if not m:
        return frozenset(), frozenset()
    reply = json.loads(m.group(1))
    every = _words(" ".join(str(v) for v in reply.values()))
    return frozenset(_content_words(reply.get("caption", ""))), frozenset(every)


def _off_topic(query: str, video: SyntheticVideo) -> Failure | None:
    """A well-formed reply that adds nothing: the caption repeats the query, copies the
    prompt's example, or is in another script than the query."""
    caption, asked = _words(video.caption), _words(query)
    if caption and caption <= asked:
        return Failure("echo", _clip(f"the caption only repeats the query: {video.caption!r}"))
    (example, everything), content = _example_words(), _content_words(video.caption) - asked
    shared = len(content & example)
    if (
        not (asked & everything)  # "bike repair" may well get the example's bike repair
        and shared >= EXAMPLE_MIN_SHARED
        and shared >= EXAMPLE_OVERLAP * len(content)
    ):
        return Failure(
            "example", _clip(f"the caption copies the prompt's example: {video.caption!r}")
        )
    want, got = _script(query), _script(video.caption)
    if want and got and want != got:
        return Failure(
            "language", _clip(f"query in {want} script, caption in {got}: {video.caption!r}")
        )
    return None


def _clip(text: str, n: int = 500) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _ends_early(text: str, err: json.JSONDecodeError) -> bool:
    """True when the JSON is a valid prefix cut short, as opposed to garbage."""
    if err.msg.startswith("Unterminated string"):
        return True
    return err.pos >= len(text.rstrip())


def parse_reply(
    query: str, content: str | None, finish_reason: str | None = None, refusal: str | None = None
) -> list[SyntheticVideo] | Failure:
    """Turn one completion into validated videos, or the Failure that says why not.

    Shared by every backend so the same reply gets the same verdict however it was produced.
    Accepts a JSON object (or a list of them), optionally inside ```json fences.
    """
    if refusal:
        return Failure("refused", _clip(str(refusal)))
    if content is None or not content.strip():
        return Failure("empty", f"empty content (finish_reason={finish_reason})")
    text = content.strip()
    fence = _FENCE_RE.match(text)
    if fence and text.startswith("```"):
        text = fence.group(1).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if _REFUSAL_RE.match(text):
            return Failure("refused", _clip(text))
        if finish_reason == "length":
            return Failure("truncated", _clip(f"finish_reason=length: {text}"))
        if text[:1] in "{[" and _ends_early(text, e):
            return Failure("truncated", _clip(f"JSON ends early ({e.msg}): {text}"))
        return Failure("malformed", _clip(f"{e}: {text}"))
    items = obj if isinstance(obj, list) else [obj]
    if not items or not all(isinstance(it, dict) for it in items):
        return Failure("invalid", _clip(f"expected a JSON object, got: {text}"))
    videos: list[SyntheticVideo] = []
    for it in items:
        if "query" in it:
            return Failure("invalid", "unexpected field 'query' in the reply")
        try:
            videos.append(SyntheticVideo.model_validate({**it, "query": query}))
        except ValidationError as e:
            errs = "; ".join(
                f"{'.'.join(str(x) for x in er['loc'])}: {er['msg']}" for er in e.errors()
            )
            return Failure("invalid", _clip(errs))
        bad = _off_topic(query, videos[-1])
        if bad is not None:
            return bad
    return videos


# ----------------------------------------------------------------------------- result


@dataclass
class SynthesisResult:
    """Videos in input-query order, one quarantine row per failed query, and the step's report."""

    videos: list[SyntheticVideo]
    quarantine: list[dict[str, Any]]
    stats: dict[str, Any]


class SynthesisBackend(Protocol):
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
class _Outcome:
    videos: list[SyntheticVideo] = field(default_factory=list)
    failure: Failure | None = None
    attempts: int = 0
    cached: bool = False
    skipped: bool = False  # not sent: the time budget was spent (counted, not quarantined)


def _unique_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str | bytes):
        raise TypeError("queries must be a sequence of strings, not a single string")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] is {type(q).__name__}, expected str")
    return list(dict.fromkeys(queries))


def _input_failure(query: str) -> Failure | None:
    if not query.strip():
        return Failure("invalid", "empty query", retryable=False)
    if len(query.encode("utf-8")) > MAX_QUERY_BYTES:
        return Failure("invalid", f"query longer than {MAX_QUERY_BYTES} bytes", retryable=False)
    return None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))  # nearest rank
    return round(sorted_values[k], 3)


def _caption_key(caption: str) -> str:
    return " ".join(caption.casefold().split())


#: Reasons of replies that parsed against the schema but add nothing (JSON-valid, not usable).
USELESS = ("echo", "example", "language")


def new_reply_counters() -> dict[str, Any]:
    """Counts over the model's replies: all, JSON-valid, usable, and every failure's reason
    (retried ones included; `failed_by_reason` counts the queries that stayed failed)."""
    return {"replies": 0, "json_valid": 0, "valid": 0, "reasons": dict.fromkeys(REASONS, 0)}


def count_reply(counters: dict[str, Any], result: list[SyntheticVideo] | Failure) -> None:
    counters["replies"] += 1
    if isinstance(result, Failure):
        counters["reasons"][result.reason] += 1
        counters["json_valid"] += result.reason in USELESS
    else:
        counters["valid"] += 1
        counters["json_valid"] += 1


def _assemble(
    backend: str,
    model: str | None,
    prompt_version: str | None,
    queries: Sequence[str],
    unique: list[str],
    outcomes: dict[str, _Outcome],
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
                    "detail": _clip(oc.failure.detail),
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


# ----------------------------------------------------------------------------- cache


class _Cache:
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

    def close(self) -> None:
        self.db.close()


def _run_sync(fn: Callable[[], SynthesisResult]) -> SynthesisResult:
    """Run `fn` here, or in a worker thread when the caller is inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="crops-synth") as pool:
        return pool.submit(fn).result()


def _jitter(query: str, attempt: int, seed: int) -> float:
    """Deterministic fraction in [0, 1): spreads retries without making runs irreproducible."""
    h = hashlib.sha256(f"{seed}\0{attempt}\0{query}".encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32


class _Tracker:
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


# ----------------------------------------------------------------------------- HTTP backend


def _normalise_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint.strip()) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"LLM endpoint must be an http(s) URL, got {endpoint!r}")
    base = endpoint.strip().rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


#: How a chat request asks for output that matches VIDEO_JSON_SCHEMA (OpenAIChatBackend's
#: `guided`): OpenAI's ``response_format`` (json_schema), which the pinned vLLM (0.32, the
#: `vllm` extra) also reads; vLLM's own ``structured_outputs`` field; llama.cpp's
#: ``response_format`` of type ``json_object`` with a ``schema`` (its server refuses
#: ``json_schema``); or nothing.
GUIDED_MODES = ("response_format", "structured_outputs", "json_object", "none")


@dataclass(frozen=True)
class ServerDialect:
    """What differs between OpenAI-compatible servers, as the client must speak to them."""

    guided: str  # one of GUIDED_MODES
    choices_per_request: bool  # honours ``n`` > 1 (otherwise one request per video)
    max_concurrency: int | None = None  # requests it decodes at once (None: batches many)


#: The servers synthesis talks to: vLLM on a cluster, llama.cpp's server on one machine
#: (llama-cpp-python 0.3: ``n`` is ignored, one choice per reply; ``seed`` is honoured).
SERVER_DIALECTS = {
    "vllm": ServerDialect(guided="response_format", choices_per_request=True),
    "llama.cpp": ServerDialect(guided="json_object", choices_per_request=False, max_concurrency=1),
}


class OpenAIChatBackend:
    """vLLM's OpenAI-compatible server (``vllm serve``) or any OpenAI-compatible endpoint."""

    name = "openai-chat"
    is_llm = True

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        cache_path: str | Path | None = None,
        prompt_version: str = PROMPT_VERSION,
        guided: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 512,
        seed: int = 0,
        server: str = "vllm",
        budget_s: float | None = None,
    ) -> None:
        self.base_url = _normalise_endpoint(endpoint)
        self.url = f"{self.base_url}/v1/chat/completions"
        if not model:
            raise ValueError("model is required (the name the server serves, see GET /v1/models)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if budget_s is not None and budget_s <= 0:
            raise ValueError(f"budget_s must be > 0 (or None: no budget), got {budget_s}")
        self.budget_s = budget_s
        self._deadline: float | None = None
        if server not in SERVER_DIALECTS:
            raise ValueError(f"server must be one of {', '.join(SERVER_DIALECTS)}, got {server!r}")
        self.server = server
        dialect = SERVER_DIALECTS[server]
        self.choices_per_request = dialect.choices_per_request
        if dialect.max_concurrency:  # more in flight would only queue and time out
            concurrency = min(concurrency, dialect.max_concurrency)
        guided = dialect.guided if guided is None else guided
        if guided not in GUIDED_MODES:
            # vLLM dropped guided_json: the pinned version ignores the field (with only a log
            # line) and the output is unconstrained, so the old mode is refused, not sent.
            hint = " (vLLM ignores guided_json: use structured_outputs)" * (guided == "guided_json")
            modes = ", ".join(GUIDED_MODES)
            raise ValueError(f"guided must be one of {modes}, got {guided!r}{hint}")
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get("CROPS_LLM_API_KEY")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.prompt_version = prompt_version
        self.prompt = load_prompt(prompt_version)
        self.guided = guided
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed

    def __repr__(self) -> str:  # never shows the API key
        return f"OpenAIChatBackend(url={self.url!r}, model={self.model!r})"

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def request_body(
        self, query: str, per_query: int, attempt: int = 0, choice: int = 0
    ) -> dict[str, Any]:
        """The chat request; the seed moves with the attempt so a retry is not a replay, and
        with the choice where the server takes one choice per request."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": render_messages(query, self.prompt),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": per_query,
            "seed": self.seed + attempt + 1000 * choice,
        }
        if self.guided == "response_format":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "synthetic_video",
                    "schema": VIDEO_JSON_SCHEMA,
                    "strict": True,
                },
            }
        elif self.guided == "structured_outputs":  # vLLM's field (StructuredOutputsParams)
            body["structured_outputs"] = {"json": VIDEO_JSON_SCHEMA}
        elif self.guided == "json_object":  # llama.cpp: the schema becomes a grammar
            body["response_format"] = {"type": "json_object", "schema": VIDEO_JSON_SCHEMA}
        return body

    def models(self) -> list[str]:
        """Model ids the server serves (GET /v1/models): a cheap readiness check."""
        r = httpx.get(f"{self.base_url}/v1/models", headers=self._headers(), timeout=self.timeout_s)
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", [])]

    def synthesize(
        self, queries: Sequence[str], per_query: int = 1, *, progress: Progress | None = None
    ) -> SynthesisResult:
        """Synthesize `per_query` videos for every distinct query; failures go to quarantine."""
        if per_query < 1:
            raise ValueError(f"per_query must be >= 1, got {per_query}")
        unique = _unique_queries(queries)
        return _run_sync(lambda: self._synthesize(queries, unique, per_query, progress))

    # -- internals: everything below runs in one thread (the event loop's)

    def _synthesize(
        self,
        queries: Sequence[str],
        unique: list[str],
        per_query: int,
        progress: Progress | None,
    ) -> SynthesisResult:
        started = time.perf_counter()
        outcomes: dict[str, _Outcome] = {}
        tracker = _Tracker(len(unique), progress)
        counters = new_reply_counters() | {"requests": 0}
        latencies: list[float] = []
        cache = _Cache(self.cache_path) if self.cache_path is not None else None
        try:
            todo: list[str] = []
            for q in unique:
                bad = _input_failure(q)
                if bad is not None:
                    outcomes[q] = _Outcome(failure=bad)
                    continue
                hit = cache.get(self._key(q, per_query)) if cache else None
                if hit is not None:
                    outcomes[q] = _Outcome(videos=hit, cached=True)
                else:
                    todo.append(q)
            log.info(
                "synthesis %s model=%s: %d queries, %d cached, %d to send (concurrency %d)",
                self.url,
                self.model,
                len(unique),
                sum(1 for o in outcomes.values() if o.cached),
                len(todo),
                self.concurrency,
            )
            tracker.advance(len(unique) - len(todo))
            if self.budget_s is not None:  # queries come poorest first: the budget cuts the tail
                self._deadline = time.monotonic() + self.budget_s
            if todo:
                asyncio.run(
                    self._run_all(todo, per_query, outcomes, cache, tracker, counters, latencies)
                )
        finally:
            if cache is not None:
                cache.close()
        return _assemble(
            self.name,
            self.model,
            self.prompt_version,
            queries,
            unique,
            outcomes,
            requests_sent=counters["requests"],
            replies=counters,
            latencies=latencies,
            started=started,
            per_query=per_query,
        )

    def _key(self, query: str, per_query: int) -> str:
        return _Cache.key(self.model, self.prompt_version, per_query, query)

    async def _run_all(self, todo, per_query, outcomes, cache, tracker, counters, latencies):
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s), limits=limits, headers=self._headers()
        ) as client:

            async def one(q: str) -> None:
                oc = await self._query(client, sem, q, per_query, counters, latencies)
                outcomes[q] = oc
                if oc.videos and cache is not None:
                    cache.put(
                        self._key(q, per_query),
                        self.model,
                        self.prompt_version,
                        per_query,
                        q,
                        oc.videos,
                    )
                tracker.advance()

            await asyncio.gather(*(one(q) for q in todo))

    async def _query(self, client, sem, query, per_query, counters, latencies) -> _Outcome:
        if self.choices_per_request or per_query == 1:
            return await self._request(client, sem, query, per_query, counters, latencies)
        # one choice per request (llama.cpp): per_query requests, each with its own seed.
        # Requests queue in order, so every query's first video comes before any second one:
        # under a time budget the videos spread over the poorest queries.
        outcomes = [
            await self._request(client, sem, query, 1, counters, latencies, choice=i)
            for i in range(per_query)
        ]
        videos = [v for o in outcomes for v in o.videos]
        attempts = sum(o.attempts for o in outcomes)
        if videos:
            return _Outcome(videos=videos, attempts=attempts)
        if outcomes[0].skipped:
            return outcomes[0]
        failed = next(o for o in outcomes if o.failure is not None)
        return _Outcome(failure=failed.failure, attempts=attempts)

    async def _request(
        self, client, sem, query, per_query, counters, latencies, choice: int = 0
    ) -> _Outcome:
        failure: Failure | None = None
        attempt = 0
        for attempt in range(self.max_retries + 1):
            delay_hint: float | None = None
            async with sem:
                if self._deadline and time.monotonic() > self._deadline:
                    if attempt == 0:
                        return _Outcome(skipped=True)  # the budget is spent: not sent
                    # a retry queued before the deadline: behind hundreds of queued queries
                    # on a one-request server it would start long after it
                    return _Outcome(failure=failure, attempts=attempt)
                # (a request started before the deadline runs to its end: the budget can be
                # overrun by one reply, a few seconds for the local model)
                counters["requests"] += 1
                t0 = time.perf_counter()
                try:
                    resp = await client.post(
                        self.url, json=self.request_body(query, per_query, attempt, choice)
                    )
                except httpx.TimeoutException as e:
                    failure = Failure(
                        "timeout", f"no reply within {self.timeout_s}s ({type(e).__name__})"
                    )
                    resp = None
                except httpx.HTTPError as e:
                    failure = Failure("http_error", f"{type(e).__name__}: {e}")
                    resp = None
                latencies.append((time.perf_counter() - t0) * 1000.0)
            if resp is not None:
                result, delay_hint = self._handle(query, resp)
                if resp.status_code < 400:  # a reply from the model, valid or not
                    count_reply(counters, result)
                if isinstance(result, list):
                    return _Outcome(videos=result, attempts=attempt + 1)
                failure = result
            if failure is None:  # unreachable: every path above sets it or returns
                failure = Failure("http_error", "no response")
            if not failure.retryable or attempt == self.max_retries:
                break
            if self._deadline is not None and time.monotonic() > self._deadline:
                break  # no retry past the budget: quarantined with the reply's own reason
            wait = self.backoff_s * 2**attempt * (1.0 + 0.1 * _jitter(query, attempt, self.seed))
            if delay_hint is not None:
                wait = max(wait, min(delay_hint, 60.0))
            log.debug(
                "retry %d for %r after %s: %s", attempt + 1, query, failure.reason, failure.detail
            )
            await asyncio.sleep(wait)
        log.debug("quarantined %r: %s after %d attempts", query, failure.reason, attempt + 1)
        return _Outcome(failure=failure, attempts=attempt + 1)

    def _handle(
        self, query: str, resp: httpx.Response
    ) -> tuple[list[SyntheticVideo] | Failure, float | None]:
        """Classify one HTTP response: videos, or a Failure (plus a Retry-After hint)."""
        if resp.status_code >= 400:
            retryable = resp.status_code >= 500 or resp.status_code == 429
            hint = None
            ra = resp.headers.get("retry-after")
            if ra is not None:
                try:
                    hint = float(ra)
                except ValueError:
                    hint = None
            detail = f"HTTP {resp.status_code}: {resp.text}"
            return Failure("http_error", _clip(detail), retryable=retryable), hint
        try:
            choices = resp.json()["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("no choices")
        except (ValueError, KeyError, TypeError) as e:
            return Failure("http_error", _clip(f"bad response body ({e}): {resp.text}")), None
        videos: list[SyntheticVideo] = []
        first_failure: Failure | None = None
        for ch in choices:
            ch = ch if isinstance(ch, dict) else {}
            msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
            got = parse_reply(
                query, msg.get("content"), ch.get("finish_reason"), refusal=msg.get("refusal")
            )
            if isinstance(got, Failure):
                first_failure = first_failure or got
            else:
                videos.extend(got)
        if videos:  # partly valid: keep the good choices, no retry needed
            return videos, None
        return first_failure or Failure("empty", "no usable choice"), None


# ----------------------------------------------------------------------------- no LLM


class NoSynthesis:
    """The non-LLM fallback when no endpoint is set: no videos, and stats that say so."""

    name = "none"
    is_llm = False

    def synthesize(
        self, queries: Sequence[str], per_query: int = 1, *, progress: Progress | None = None
    ) -> SynthesisResult:
        unique = _unique_queries(queries)
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


def make_backend(endpoint: str | None, model: str | None = None, **kwargs: Any) -> SynthesisBackend:
    """OpenAIChatBackend when an endpoint is given, else the clearly named NoSynthesis."""
    if not endpoint:
        return NoSynthesis()
    if not model:
        raise ValueError(f"an LLM endpoint ({endpoint}) needs a model name")
    return OpenAIChatBackend(endpoint, model, **kwargs)
