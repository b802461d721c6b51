"""The HTTP client: synthesis through an OpenAI-compatible chat server.

Owns :class:`OpenAIChatBackend`, which talks to ``vllm serve`` on a cluster, to llama.cpp's
server on one machine (`crops.mining.llm_server` starts it) or to any OpenAI-compatible
endpoint, and what differs between those servers (:class:`ServerDialect`,
:data:`SERVER_DIALECTS`, :data:`GUIDED_MODES`). Async with bounded concurrency,
schema-constrained JSON output, retries with backoff, an optional time budget, the reply cache
(`cache`) and a quarantine with one reason per failed query; replies are judged by
`reply.parse_completions`, the results assembled by `base.assemble`, as for every backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from crops.mining.synthesis.base import (
    Outcome,
    Progress,
    SynthesisResult,
    Tracker,
    assemble,
    unique_queries,
)
from crops.mining.synthesis.cache import look_up, open_cache
from crops.mining.synthesis.prompt import PROMPT_VERSION, load_prompt, render_messages
from crops.mining.synthesis.reply import (
    VIDEO_JSON_SCHEMA,
    Failure,
    SyntheticVideo,
    clip,
    count_reply,
    new_reply_counters,
    parse_completions,
)

log = logging.getLogger(__name__)


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
        unique = unique_queries(queries)
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
        tracker = Tracker(len(unique), progress)
        counters = new_reply_counters() | {"requests": 0}
        latencies: list[float] = []
        with open_cache(self.cache_path) as cache:
            outcomes, todo = look_up(
                unique,
                cache,
                model=self.model,
                prompt_version=self.prompt_version,
                per_query=per_query,
            )
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
        return assemble(
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
                    cache.store(self.model, self.prompt_version, per_query, q, oc.videos)
                tracker.advance()

            await asyncio.gather(*(one(q) for q in todo))

    async def _query(self, client, sem, query, per_query, counters, latencies) -> Outcome:
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
            return Outcome(videos=videos, attempts=attempts)
        if outcomes[0].skipped:
            return outcomes[0]
        failed = next(o for o in outcomes if o.failure is not None)
        return Outcome(failure=failed.failure, attempts=attempts)

    async def _request(
        self, client, sem, query, per_query, counters, latencies, choice: int = 0
    ) -> Outcome:
        failure: Failure | None = None
        attempt = 0
        for attempt in range(self.max_retries + 1):
            delay_hint: float | None = None
            async with sem:
                if self._deadline and time.monotonic() > self._deadline:
                    if attempt == 0:
                        return Outcome(skipped=True)  # the budget is spent: not sent
                    # a retry queued before the deadline: behind hundreds of queued queries
                    # on a one-request server it would start long after it
                    return Outcome(failure=failure, attempts=attempt)
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
                    return Outcome(videos=result, attempts=attempt + 1)
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
        return Outcome(failure=failure, attempts=attempt + 1)

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
            return Failure("http_error", clip(detail), retryable=retryable), hint
        try:
            choices = resp.json()["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError("no choices")
        except (ValueError, KeyError, TypeError) as e:
            return Failure("http_error", clip(f"bad response body ({e}): {resp.text}")), None
        completions = []
        for ch in choices:
            ch = ch if isinstance(ch, dict) else {}
            msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
            completions.append((msg.get("content"), ch.get("finish_reason"), msg.get("refusal")))
        # the response counts as one reply (in _request), whatever its number of choices
        return parse_completions(query, completions), None
