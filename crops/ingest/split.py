"""The by-query held-out slice of an imported collection: one rule for the importers, the
benchmarks and docs/real-data.md, so every figure is measured on the same queries."""

from __future__ import annotations

import hashlib

#: Share of a collection's queries held out for evaluation (never trained on).
HOLDOUT_SHARE = 0.2


def held_out(query_key: str, share: float = HOLDOUT_SHARE) -> bool:
    """Whether a query (by its id or text) is in the held-out slice.

    A keyed hash, not a random draw: the slice does not depend on row order, on a seed or on
    the other queries, so a collection imported twice, or grown, keeps its held-out queries.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"held-out share must be in [0, 1), got {share}")
    digest = hashlib.blake2b(query_key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < share
