"""String ids of real logs as the contracts' int64 ids, and the mapping table kept beside them.

Real logs name users, sessions, requests and videos with strings ("clueweb12-0000tw-05-12114",
"u_8f3a"). The contracts want int64. The rule is stateless, so importing more logs later, or
another table of the same platform, gives every id the same int64:

- a canonical decimal integer in [0, 2**62) is kept as it is (KuaiSAR's ids stay readable);
- anything else becomes a keyed BLAKE2b hash in [2**62, 2**63), a range no kept id can reach.

Every import writes ``ids.parquet`` (kind, source_id, id), so a result can be traced back to the
platform's own ids, and a hash collision (two source ids, one int64) is an error, never a merge.
"""

from __future__ import annotations

import hashlib

import polars as pl

KEPT_MAX = 2**62
ID_KINDS = ("video", "user", "session", "request")
#: contract column -> id kind
ID_COLUMNS = {
    "video_id": "video",
    "user_id": "user",
    "session_id": "session",
    "request_id": "request",
}


class IdCollision(ValueError):
    """Two different source ids of one kind map to the same int64."""


def _hashed(value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, person=b"crops-id").digest()
    return KEPT_MAX + int.from_bytes(digest, "little") % KEPT_MAX


#: A canonical decimal integer: no sign, no leading zero, ASCII digits only.
_CANONICAL = r"^(0|[1-9][0-9]*)$"


def to_int64(values: pl.Series) -> pl.Series:
    """Each source id (string, or integer) as its contract int64; nulls stay null.

    Kept ids are found column-wise; only the distinct other ids are hashed, one by one.
    """
    as_text = values.cast(pl.String)
    canonical = as_text.str.contains(_CANONICAL)
    number = pl.select(pl.when(canonical).then(as_text.cast(pl.UInt64, strict=False))).to_series()
    kept = pl.select(pl.when(number < KEPT_MAX).then(number).cast(pl.Int64)).to_series()
    others = as_text.filter(kept.is_null() & as_text.is_not_null()).unique().to_list()
    lookup = pl.DataFrame(
        {"s": others, "h": [_hashed(v) for v in others]},
        schema={"s": pl.String, "h": pl.Int64},
    )
    hashed = pl.DataFrame({"s": as_text}).join(lookup, on="s", how="left", maintain_order="left")
    return kept.fill_null(hashed["h"]).alias(values.name)


class IdTable:
    """The (kind, source_id, id) rows of one import; refuses collisions."""

    def __init__(self) -> None:
        self._parts: list[pl.DataFrame] = []

    def map(self, kind: str, values: pl.Series) -> pl.Series:
        """`values` as int64 ids of `kind`, recorded in the table."""
        if kind not in ID_KINDS:
            raise ValueError(f"unknown id kind {kind!r}: one of {', '.join(ID_KINDS)}")
        mapped = to_int64(values)
        pairs = pl.DataFrame(
            {"kind": kind, "source_id": values.cast(pl.String), "id": mapped}
        ).drop_nulls()
        self._parts.append(pairs.unique())
        return mapped

    def frame(self) -> pl.DataFrame:
        """The mapping table, sorted by kind and id; a collision is an IdCollision."""
        schema = {"kind": pl.String, "source_id": pl.String, "id": pl.Int64}
        df = pl.concat([pl.DataFrame(schema=schema), *self._parts]).unique().sort("kind", "id")
        clash = df.filter(pl.col("id").is_duplicated().over("kind"))
        if clash.height:
            kind, _, i = clash.row(0)
            sources = clash.filter((pl.col("kind") == kind) & (pl.col("id") == i))["source_id"]
            raise IdCollision(f"{kind} ids {sorted(sources.to_list())[:4]} all map to {i}")
        return df
