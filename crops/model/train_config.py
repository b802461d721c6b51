"""`TrainConfig`: everything one training run needs, stored beside the model it produces.

Its own module so that the CLI, the components and the recipe (`crops.model.recipe`) can build
and validate a configuration without importing the training loop (torch, Ray).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crops.model.convergence import StopRule
from crops.model.names import parse_encoder


class TrainConfig(BaseModel):
    """Everything a training run needs; stored beside the model it produces."""

    model_config = ConfigDict(extra="forbid")

    samples: str
    videos: list[str]
    out: str
    loss: Literal["h-infonce", "infonce", "softmax"] = "h-infonce"
    encoder: str = "hash"
    shared: bool = True
    dim: int = Field(128, ge=8)
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(128, ge=8)
    queries_per_batch: int = Field(32, ge=1)
    group_size: int = Field(8, ge=2)
    lr: float | None = Field(None, gt=0, description="default 2e-5 for hf encoders, 1e-3 for hash")
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.05, gt=0)
    positive_min_label: int = Field(4, ge=1, le=5)
    hard_negatives: Literal["none", "bm25", "model"] = "none"
    n_hard: int = Field(0, ge=0)
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="batches per epoch, the unit of ANCE refreshes and checkpoint times"
        " (default: samples / group_size / batch)",
    )
    stop: StopRule = Field(default_factory=StopRule, description="when training stops")
    checkpoint_every: int = Field(
        1000,
        ge=1,
        description="steps between checkpoints, taken at the first epoch end past them (a"
        " click-only method's epoch is about 40 steps: a checkpoint each would cost more than"
        " the training); one is always taken at the stop",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Ray Train workers: 1 on a laptop (a second hash-encoder worker on 2 cores is"
        " slower: bench/bench_train.py part c); N on a cluster",
    )
    use_gpu: bool = False
    storage_path: str | None = Field(
        None, description="checkpoints; default OUT-checkpoints, beside the model folder"
    )
    name: str = "crops-train"
    max_failures: int = Field(2, ge=0)
    seed: int = 0
    fingerprint: str | None = Field(
        None, description="set by train(): the config and input files a checkpoint belongs to"
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, spec: str) -> str:
        parse_encoder(spec)
        return spec

    @model_validator(mode="after")
    def _hard_negative_options(self) -> TrainConfig:
        if self.hard_negatives != "none" and self.n_hard == 0:
            raise ValueError(f"hard_negatives={self.hard_negatives!r} needs n_hard > 0")
        if self.hard_negatives == "none" and self.n_hard > 0:
            raise ValueError("n_hard > 0 needs hard_negatives bm25 or model")
        if self.queries_per_batch < self.workers:
            raise ValueError(
                f"queries_per_batch ({self.queries_per_batch}) < workers ({self.workers}):"
                " every worker needs queries"
            )
        return self

    def build_model(self):
        """A fresh dual encoder as this configuration describes it."""
        from crops.model.encoders import build_dual_encoder

        return build_dual_encoder(
            self.encoder,
            shared=self.shared,
            dim=self.dim,
            pooling=self.pooling,
            max_length=self.max_length,
            seed=self.seed,
        )

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-5 if parse_encoder(self.encoder).kind == "hf" else 1e-3


__all__ = ["TrainConfig"]
