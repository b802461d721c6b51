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
from pathlib import Path

import polars as pl

KEPT_MAX = 2**62
ID_KINDS = ("video", "user", "session", "request")
#: contract column -> id kind
ID_COLUMNS = {"video_id": "video", "user_id": "user", "session_id": "session", "request_id": "request"}


class IdCollision(ValueError):
    """Two different source ids of one kind map to the same int64."""


def _hashed(value: str) -> int:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, person=b"crops-id").digest()
    return KEPT_MAX + int.from_bytes(digest, "little") % KEPT_MAX


def _one(value: str) -> int:
    if value.isascii() and value.isdigit() and (value == "0" or not value.startswith("0")):
        n = int(value)
        if n < KEPT_MAX:
            return n
    return _hashed(value)


def to_int64(values: pl.Series) -> pl.Series:
    """Each source id (string, or integer) as its contract int64; nulls stay null."""
    as_text = values.cast(pl.String)
    distinct = as_text.drop_nulls().unique()
    lookup = dict(zip(distinct.to_list(), (_one(v) for v in distinct.to_list()), strict=True))
    return as_text.replace_strict(lookup, default=None, return_dtype=pl.Int64).alias(values.name)


class IdTable:
    """The (kind, source_id, id) rows of one import; refuses collisions."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, int]] = {}

    def map(self, kind: str, values: pl.Series) -> pl.Series:
        """`values` as int64 ids of `kind`, recorded in the table."""
        if kind not in ID_KINDS:
            raise ValueError(f"unknown id kind {kind!r}: one of {', '.join(ID_KINDS)}")
        mapped = to_int64(values)
        seen = self._seen.setdefault(kind, {})
        pairs = pl.DataFrame({"s": values.cast(pl.String), "i": mapped}).drop_nulls().unique()
        for source, i in pairs.iter_rows():
            seen.setdefault(source, i)
        return mapped

    def frame(self) -> pl.DataFrame:
        rows = [(k, s, i) for k, m in self._seen.items() for s, i in m.items()]
        df = pl.DataFrame(
            rows, schema={"kind": pl.String, "source_id": pl.String, "id": pl.Int64}, orient="row"
        ).sort("kind", "id")
        clash = df.filter(pl.col("id").is_duplicated().over("kind"))
        if clash.height:
            kind, source, i = clash.row(0)
            raise IdCollision(f"{kind} ids {clash['source_id'].to_list()[:4]} all map to {i}")
        return df

    def write(self, out: Path) -> Path:
        target = Path(out) / "ids.parquet"
        self.frame().write_parquet(target)
        return target
