"""World configuration: one pydantic model, three named scales."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S

Scale = Literal["tiny", "default", "large"]

#: The day the simulated logs start (UTC); fixed so that a seed gives the same bytes.
EPOCH_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z


class FormMix(BaseModel):
    """How often a user types each surface form of an intent (renormalised per intent)."""

    model_config = ConfigDict(extra="forbid")
    head: float = 0.40
    refined: float = 0.10
    colloquial: float = 0.22
    misspelt: float = 0.16
    ambiguous: float = 0.12


class WorldConfig(BaseModel):
    """Everything that shapes a simulated world. Same config and seed, same bytes."""

    model_config = ConfigDict(extra="forbid")

    scale: Scale = "default"
    seed: int = 1
    n_videos: int = Field(20_000, ge=200)
    n_users: int = Field(4_000, ge=10)
    days: int = Field(6, ge=1, description="days of training logs; the test day follows them")
    searches_per_user_day: float = Field(1.6, gt=0)
    test_searches_per_user: float = Field(1.0, gt=0)
    feed_sessions_per_user_day: float = Field(1.0, ge=0)
    feed_session_len: int = Field(12, ge=1)
    # the production cascade: pool -> retrieve_k (enter pre-ranking) -> rank_k -> show_k
    lexical_pool: int = Field(150, ge=10, description="lexical candidates kept per distinct query")
    retrieve_k: int = Field(60, ge=4)
    legacy_k: int = Field(
        25, ge=0, description="of retrieve_k, candidates from the legacy semantic channel"
    )
    legacy_pool: int = Field(50, ge=1, description="videos the legacy channel knows per query")
    rank_k: int = Field(20, ge=2)
    show_k: int = Field(8, ge=1)
    colloquial_share: float = Field(0.45, ge=0, le=1, description="videos worded colloquially")
    spam_share: float = Field(0.4, ge=0, le=1, description="videos with hashtag-spam words")
    form_mix: FormMix = FormMix()
    reformulation_window_s: int = Field(REFORMULATION_WINDOW_S, gt=0)
    reformulate_prob: float = Field(0.75, ge=0, le=1)
    max_queries_per_session: int = Field(4, ge=1)
    feed_search_coupling: float = Field(
        0.6, ge=0, le=1, description="chance a search has a feed session on its topic nearby"
    )
    feed_window_s: int = Field(1800, gt=0)
    long_play_ms: int = LONG_PLAY_MS
    graded_queries: int = Field(100, ge=1)
    chunk: int = Field(20_000, ge=100, description="sessions simulated per vectorised batch")

    @model_validator(mode="after")
    def _cascade_order(self) -> WorldConfig:
        if not self.show_k < self.rank_k < self.retrieve_k <= self.lexical_pool:
            raise ValueError("need show_k < rank_k < retrieve_k <= lexical_pool")
        if self.lexical_pool > self.n_videos:
            raise ValueError("lexical_pool exceeds n_videos")
        if not self.legacy_k <= self.legacy_pool or self.legacy_k >= self.retrieve_k:
            raise ValueError("need legacy_k <= legacy_pool and legacy_k < retrieve_k")
        return self

    @classmethod
    def for_scale(cls, scale: Scale, seed: int = 1, **overrides) -> WorldConfig:
        """The named scales: tiny (tests, seconds), default (the main job), large (benchmarks)."""
        presets: dict[str, dict] = {
            "tiny": dict(n_videos=1_500, n_users=300, days=2, graded_queries=40, chunk=2_000),
            "default": dict(),
            "large": dict(n_videos=100_000, n_users=40_000, days=5, searches_per_user_day=1.0),
        }
        return cls(scale=scale, seed=seed, **{**presets[scale], **overrides})
