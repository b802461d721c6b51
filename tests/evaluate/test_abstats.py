"""The A/B statistics: per-user sums from online logs, clustered intervals, lifts, SRM."""

from __future__ import annotations

import json
import zlib

import numpy as np
import polars as pl
import pytest
from scipy import stats
from support.ab_synth import experiment

from crops.evaluate.abstats import (
    COUNTS,
    METRICS,
    add_user_tables,
    analyze,
    bootstrap_ci,
    design_effect,
    lift_stats,
    ratio_stats,
    srm_check,
    user_table,
)
from crops.world.online import production_retriever, run_online
from crops.world.summary import behaviour


def _jsonable(obj) -> str:
    return json.dumps(obj, allow_nan=False)  # raises on NaN / inf


# --------------------------------------------------------------------------- user table


def _flaky(world):
    """Production retrieval where a third of the queries get nothing (no log rows for them)."""
    prod = production_retriever(world)

    def retrieve(queries, k):
        hits = prod(queries, k)
        return [
            [] if zlib.crc32(q.encode()) % 3 == 0 else h for q, h in zip(queries, hits, strict=True)
        ]

    return retrieve


def test_user_table_sums_reproduce_behaviour(tiny_world) -> None:
    run = run_online(tiny_world, _flaky(tiny_world), seed=4, searches_per_user=2.0)
    cfg = tiny_world.cfg
    users = user_table(
        run.search_log,
        run.requests,
        window_s=cfg.reformulation_window_s,
        long_play_ms=cfg.long_play_ms,
    )
    want = run.metrics(tiny_world)
    assert want["requests_without_results"] > 0
    got = users.select(pl.col(c).sum() for c in COUNTS).row(0, named=True)
    assert got["requests"] == want["requests"]
    assert got["impressions"] == want["impressions"]
    assert got["reformulated"] == want["reformulated_requests"]
    assert got["clicks"] / got["impressions"] == want["ctr"]
    assert got["long_plays"] / got["clicks"] == want["long_play_rate"]
    assert got["reformulated"] / got["requests"] == want["reformulation_rate"]
    # every requesting user is there, those without a single result with zero impressions
    assert set(users["user_id"]) == set(run.requests["user_id"].to_pylist())
    assert users["user_id"].is_unique().all()
    assert users.filter((pl.col("impressions") == 0) & (pl.col("requests") > 0)).height > 0
    assert all(users[c].dtype == pl.Int64 for c in COUNTS)
    # reruns with the same seed give the same table
    again = run_online(tiny_world, _flaky(tiny_world), seed=4, searches_per_user=2.0)
    assert users.equals(
        user_table(
            again.search_log,
            again.requests,
            window_s=cfg.reformulation_window_s,
            long_play_ms=cfg.long_play_ms,
        )
    )


def test_user_table_agrees_with_behaviour_without_empty_requests(tiny_world) -> None:
    run = run_online(tiny_world, production_retriever(tiny_world), seed=2)
    cfg = tiny_world.cfg
    users = user_table(
        pl.from_arrow(run.search_log),
        pl.from_arrow(run.requests),
        window_s=cfg.reformulation_window_s,
        long_play_ms=cfg.long_play_ms,
    )
    ref = behaviour(
        pl.from_arrow(run.search_log).lazy(), cfg.reformulation_window_s, cfg.long_play_ms
    )
    assert users["clicks"].sum() / users["impressions"].sum() == ref["ctr"]
    assert users["requests"].sum() == ref["requests"]


def test_user_table_rejects_logs_of_another_run(tiny_world) -> None:
    a = run_online(tiny_world, production_retriever(tiny_world), seed=1)
    req = pl.from_arrow(a.requests).head(10)
    with pytest.raises(ValueError, match="missing from requests"):
        user_table(a.search_log, req, window_s=90, long_play_ms=18000)
    with pytest.raises(ValueError, match="missing column"):
        user_table(
            pl.from_arrow(a.search_log).drop("clicked"), a.requests, window_s=90, long_play_ms=18000
        )


def test_add_user_tables_sums_days_and_refuses_a_user_in_two_arms() -> None:
    day1, day2 = experiment(3, 300, days=2)
    total = add_user_tables(day1, day2)
    assert total.height == day2.height > day1.height  # day 2 brings new users
    both = day1.join(day2, on=["user_id", "arm"], suffix="_2").join(
        total, on="user_id", suffix="_t"
    )
    for c in COUNTS:
        assert (both[f"{c}_t"] == both[c] + both[f"{c}_2"]).all()
    moved = day1.head(1).with_columns(
        pl.when(pl.col("arm") == "control")
        .then(pl.lit("treatment"))
        .otherwise(pl.lit("control"))
        .alias("arm")
    )
    with pytest.raises(ValueError, match="both arms"):
        add_user_tables(day1, moved)


# --------------------------------------------------------------------------- intervals


def _clustered(rng: np.random.Generator, n: int, ctr: float = 0.14, conc: float = 8.0):
    """Users with Poisson(20) impressions and their own Beta CTR: strongly clustered clicks."""
    m = rng.poisson(20, n)
    p = rng.beta(ctr * conc, (1 - ctr) * conc, n)
    return rng.binomial(m, p), m


def test_delta_method_covers_95_percent_with_user_clustering() -> None:
    """The real check that the clustering is right; the binomial interval under-covers."""
    rng = np.random.default_rng(2024)
    truth, hits, naive_hits, runs = 0.14, 0, 0, 1000
    z = stats.norm.isf(0.025)
    for _ in range(runs):
        y, x = _clustered(rng, 400, truth)
        s = ratio_stats(y, x)
        hits += s["ci_low"] <= truth <= s["ci_high"]
        r = y.sum() / x.sum()
        half = z * np.sqrt(r * (1 - r) / x.sum())  # impressions as independent trials
        naive_hits += r - half <= truth <= r + half
    assert 0.93 <= hits / runs <= 0.97, hits / runs
    assert naive_hits / runs < 0.85, naive_hits / runs


def test_lift_interval_covers_the_planted_lift() -> None:
    rng = np.random.default_rng(7)
    lift, hits, runs = 0.10, 0, 600
    for _ in range(runs):
        yc, xc = _clustered(rng, 500)
        yt, xt = _clustered(rng, 500, 0.14 * (1 + lift))
        ls = lift_stats(ratio_stats(yc, xc), ratio_stats(yt, xt), +1, 0.05)
        hits += ls["lift_ci_low"] <= lift <= ls["lift_ci_high"]
        assert (ls["lift_ci_low"] > 0 or ls["lift_ci_high"] < 0) == ls["significant"]
    assert 0.93 <= hits / runs <= 0.97, hits / runs


def test_bootstrap_agrees_with_the_delta_method() -> None:
    y, x = _clustered(np.random.default_rng(11), 20_000)
    s = ratio_stats(y, x)
    lo, hi = bootstrap_ci(y, x, n_boot=800, seed=3)
    width = s["ci_high"] - s["ci_low"]
    assert abs(lo - s["ci_low"]) < 0.08 * width and abs(hi - s["ci_high"]) < 0.08 * width
    assert bootstrap_ci(y, x, n_boot=50, seed=3) == bootstrap_ci(y, x, n_boot=50, seed=3)


# --------------------------------------------------------------------------- analysis


def test_analyze_matches_a_hand_computation_and_is_json() -> None:
    users = experiment(5, 4000, lift=0.15, reformulation_lift=0.2)[-1]
    a = analyze(users, expected_treatment_share=0.5)
    _jsonable(a)
    for arm in ("control", "treatment"):
        df = users.filter(pl.col("arm") == arm)
        assert a["arms"][arm]["users"] == df.height
        for name, (num, den, _) in METRICS.items():
            y, x = df[num].to_numpy().astype(float), df[den].to_numpy().astype(float)
            r = y.sum() / x.sum()
            se = np.sqrt(np.var(y - r * x, ddof=1) / len(y)) / x.mean()
            m = a["arms"][arm]["metrics"][name]
            assert m["value"] == pytest.approx(r, rel=1e-12)
            assert m["se"] == pytest.approx(se, rel=1e-9)
            assert m["ci_low"] == pytest.approx(r - 1.959964 * se, rel=1e-6)
            assert (m["numerator"], m["denominator"]) == (int(y.sum()), int(x.sum()))
    ctr = a["metrics"]["ctr"]
    c, t = (a["arms"][k]["metrics"]["ctr"] for k in ("control", "treatment"))
    assert ctr["lift"] == pytest.approx(t["value"] / c["value"] - 1)
    se = np.hypot(c["se"] / c["value"], t["se"] / t["value"])
    assert ctr["p_value"] == pytest.approx(
        2 * stats.norm.sf(abs(np.log(t["value"] / c["value"])) / se)
    )
    assert ctr["better"] and not ctr["worse"]
    # more reformulation is worse (good direction -1)
    assert a["metrics"]["reformulation_rate"]["worse"]
    assert not a["metrics"]["reformulation_rate"]["better"]
    assert not a["srm"]["flagged"]
    assert analyze(users, expected_treatment_share=0.5) == a  # deterministic


def test_srm_flags_52_48_at_20k_users_but_not_50_2() -> None:
    assert srm_check(9_600, 10_400, 0.5)["flagged"]
    ok = srm_check(9_960, 10_040, 0.5)
    assert not ok["flagged"] and ok["p_value"] > 0.3
    # through analyze, on user tables
    users = pl.DataFrame(
        {
            "arm": ["control"] * 9_600 + ["treatment"] * 10_400,
            "user_id": np.arange(20_000),
            **{c: np.ones(20_000, dtype=np.int64) for c in COUNTS},
        }
    )
    srm = analyze(users, expected_treatment_share=0.5)["srm"]
    assert srm["flagged"] and srm["p_value"] < 1e-6
    assert srm["observed_treatment_share"] == pytest.approx(0.52)
    assert not analyze(users, expected_treatment_share=0.52)["srm"]["flagged"]


def test_degenerate_inputs_give_insufficient_data_not_nan() -> None:
    users = experiment(8, 400)[-1]
    only_control = users.filter(pl.col("arm") == "control")
    a = analyze(only_control, expected_treatment_share=0.5)
    _jsonable(a)
    assert a["arms"]["treatment"]["users"] == 0
    assert a["arms"]["treatment"]["metrics"]["ctr"]["status"] == "insufficient data"
    assert a["metrics"]["ctr"]["status"] == "insufficient data"
    assert a["metrics"]["ctr"]["p_value"] is None and not a["metrics"]["ctr"]["better"]
    assert a["srm"]["flagged"]

    no_clicks = users.with_columns(pl.lit(0, pl.Int64).alias(c) for c in ("clicks", "long_plays"))
    a = analyze(no_clicks, expected_treatment_share=0.5)
    _jsonable(a)
    lp = a["arms"]["control"]["metrics"]["long_play_rate"]
    assert lp["status"] == "insufficient data" and "zero denominator" in lp["reason"]
    ctr = a["arms"]["control"]["metrics"]["ctr"]  # all zero: no variance
    assert ctr["value"] == 0.0 and ctr["status"] == "insufficient data"
    assert "zero variance" in ctr["reason"]
    assert a["metrics"]["ctr"]["status"] == "insufficient data"

    one_each = users.group_by("arm").head(1)
    _jsonable(analyze(one_each, expected_treatment_share=0.5))

    empty = analyze(users.clear(), expected_treatment_share=0.1)  # a first look with no traffic
    _jsonable(empty)
    assert empty["srm"]["p_value"] is None and not empty["srm"]["flagged"]
    assert empty["metrics"]["reformulation_rate"]["status"] == "insufficient data"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("clicks"), "missing column"),
        (lambda df: df.with_columns(pl.lit("b").alias("arm")), "unknown arm"),
        (lambda df: pl.concat([df, df.head(1)]), "more than once"),
        (lambda df: df.with_columns(pl.lit(-1, pl.Int64).alias("requests")), "negative"),
        (lambda df: df.with_columns((pl.col("impressions") + 1).alias("clicks")), "exceed 1"),
        (lambda df: df.with_columns(pl.col("clicks").cast(pl.Float64)), "integer"),
    ],
)
def test_bad_user_tables_are_clear_errors(change, message) -> None:
    users = experiment(9, 200)[-1]
    with pytest.raises(ValueError, match=message):
        analyze(change(users), expected_treatment_share=0.5)


def test_design_effect_measures_clustering() -> None:
    independent = pl.DataFrame(
        {
            "user_id": np.arange(20_000),
            "impressions": np.full(20_000, 20, dtype=np.int64),
            "clicks": np.random.default_rng(1).binomial(20, 0.14, 20_000),
            **{
                c: np.zeros(20_000, dtype=np.int64)
                for c in ("long_plays", "requests", "reformulated")
            },
        }
    )
    assert design_effect(independent)["design_effect"] == pytest.approx(1.0, abs=0.05)
    clustered = design_effect(experiment(12, 20_000)[-1])
    assert clustered["design_effect"] > 1.8
    assert 20 < clustered["per_user_denominator"] < 30
