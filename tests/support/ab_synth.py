"""Synthetic A/B traffic with known truth, user-clustered like real traffic.

Each user has their own CTR, long-play and reformulation propensities (Beta draws around the
platform's rates), arrives on a random day of the test and comes back on later days at random;
each active day brings a few requests of 8 impressions (some empty). A treatment multiplies
every treated user's CTR by (1 + lift). Looks are cumulative over days, as in the A/B runner.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from crops.evaluate.abstats import COUNTS

CTR, LONG_PLAY, REFORM = 0.14, 0.77, 0.30
CONCENTRATION = 20.0  # Beta a + b: per-user spread; intra-user correlation 1 / 21


def _beta(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.beta(mean * CONCENTRATION, (1 - mean) * CONCENTRATION, n)


def experiment(
    seed: int,
    n_users: int,
    *,
    days: int = 5,
    lift: float = 0.0,
    reformulation_lift: float = 0.0,
    treatment_share: float = 0.5,
) -> list[pl.DataFrame]:
    """User tables (arm, user_id, COUNTS) at the end of each day 1..days, cumulative.

    `lift` multiplies treated users' CTR, `reformulation_lift` their reformulation rate.
    """
    rng = np.random.default_rng(seed)
    treated = rng.random(n_users) < treatment_share
    ctr = _beta(rng, CTR, n_users) * np.where(treated, 1 + lift, 1.0)
    lp, ref = _beta(rng, LONG_PLAY, n_users), _beta(rng, REFORM, n_users)
    ref = np.minimum(ref * np.where(treated, 1 + reformulation_lift, 1.0), 1)
    arrival = rng.integers(0, days, n_users)
    day = np.arange(days)[None, :]
    active = (day == arrival[:, None]) | (
        (day > arrival[:, None]) & (rng.random((n_users, days)) < 0.5)
    )
    requests = np.where(active, 1 + rng.poisson(0.6, (n_users, days)), 0)
    impressions = 8 * rng.binomial(requests, 0.95)
    clicks = rng.binomial(impressions, np.minimum(ctr, 1)[:, None])
    long_plays = rng.binomial(clicks, lp[:, None])
    reformulated = rng.binomial(requests, ref[:, None])
    cum = {
        c: np.cumsum(a, axis=1)
        for c, a in zip(
            COUNTS, (impressions, clicks, long_plays, requests, reformulated), strict=True
        )
    }
    arm = np.where(treated, "treatment", "control")
    looks = []
    for k in range(days):
        seen = arrival <= k
        looks.append(
            pl.DataFrame(
                {
                    "arm": arm[seen],
                    "user_id": np.flatnonzero(seen),
                    **{c: cum[c][seen, k].astype(np.int64) for c in COUNTS},
                }
            )
        )
    return looks
