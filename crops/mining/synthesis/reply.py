"""What a model's reply must be, and the one verdict on it.

Owns the reply schema (:data:`VIDEO_JSON_SCHEMA`, sent for guided decoding), the validated
:class:`SyntheticVideo`, :class:`Failure` with its :data:`REASONS`, :func:`parse_reply` (one
completion) and :func:`parse_completions` (every completion of one query), the reply
counters, and the check of a query before any model sees it (:func:`input_failure`).

Every backend runs every reply through these, so a reply is accepted or rejected for the same
reason whichever way it was produced (an HTTP server, an in-process engine, a Ray actor).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crops.mining.synthesis.prompt import PROMPT_VERSION, load_prompt

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
        return Failure("echo", clip(f"the caption only repeats the query: {video.caption!r}"))
    (example, everything), content = _example_words(), _content_words(video.caption) - asked
    shared = len(content & example)
    if (
        not (asked & everything)  # "bike repair" may well get the example's bike repair
        and shared >= EXAMPLE_MIN_SHARED
        and shared >= EXAMPLE_OVERLAP * len(content)
    ):
        return Failure(
            "example", clip(f"the caption copies the prompt's example: {video.caption!r}")
        )
    want, got = _script(query), _script(video.caption)
    if want and got and want != got:
        return Failure(
            "language", clip(f"query in {want} script, caption in {got}: {video.caption!r}")
        )
    return None


def clip(text: str, n: int = 500) -> str:
    """`text`, cut to `n` characters (marked with ...) for a quarantine row or a log line."""
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
        return Failure("refused", clip(str(refusal)))
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
            return Failure("refused", clip(text))
        if finish_reason == "length":
            return Failure("truncated", clip(f"finish_reason=length: {text}"))
        if text[:1] in "{[" and _ends_early(text, e):
            return Failure("truncated", clip(f"JSON ends early ({e.msg}): {text}"))
        return Failure("malformed", clip(f"{e}: {text}"))
    items = obj if isinstance(obj, list) else [obj]
    if not items or not all(isinstance(it, dict) for it in items):
        return Failure("invalid", clip(f"expected a JSON object, got: {text}"))
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
            return Failure("invalid", clip(errs))
        bad = _off_topic(query, videos[-1])
        if bad is not None:
            return bad
    return videos


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


def parse_completions(
    query: str,
    completions: Iterable[Sequence[str | None]],
    counters: dict[str, Any] | None = None,
) -> list[SyntheticVideo] | Failure:
    """Every completion of one query through :func:`parse_reply`: the videos of the usable
    ones (partly valid is enough: no retry needed), else the first completion's Failure (a
    Failure means: retry if attempts are left).

    A completion is ``(content, finish_reason)`` or ``(content, finish_reason, refusal)``.
    `counters` (:func:`new_reply_counters`), when given, counts every completion as a reply.
    """
    videos: list[SyntheticVideo] = []
    first: Failure | None = None
    for content, finish_reason, *rest in completions:
        got = parse_reply(query, content, finish_reason, refusal=rest[0] if rest else None)
        if counters is not None:
            count_reply(counters, got)
        if isinstance(got, Failure):
            first = first or got
        else:
            videos.extend(got)
    if videos:
        return videos
    return first or Failure("empty", "no completion")


def input_failure(query: str) -> Failure | None:
    """Why a query is never sent to a model (empty, or longer than MAX_QUERY_BYTES), or None."""
    if not query.strip():
        return Failure("invalid", "empty query", retryable=False)
    if len(query.encode("utf-8")) > MAX_QUERY_BYTES:
        return Failure("invalid", f"query longer than {MAX_QUERY_BYTES} bytes", retryable=False)
    return None
