"""The canary decision: group-sequential levels, the rules, A/A and power where truth is known."""

from __future__ import annotations

import copy
import hashlib
import math
import time

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from scipy import stats
from support.ab_synth import experiment

from crops.evaluate.abstats import add_user_tables, analyze, design_effect, user_table
from crops.evaluate.sequential import (
    CanaryPolicy,
    boundaries,
    crossing_probabilities,
    decide,
    look_fractions,
    nominal_level,
    required_users,
    spent_alpha,
)
from crops.world.online import EndpointStats, production_retriever, run_online

TS = (0.2, 0.4, 0.6, 0.8, 1.0)
HEALTHY = {
    "control": {"requests": 5000, "errors": 2, "error_rate": 0.0004, "p99_ms": 40.0},
    "treatment": {"requests": 5000, "errors": 3, "error_rate": 0.0006, "p99_ms": 60.0},
}


def _upper_99(alpha: float, runs: int) -> float:
    """The 99 % upper end of the false-promotion rate a correct procedure can show by chance."""
    return float(stats.binom.ppf(0.99, runs, alpha)) / runs


# --------------------------------------------------------------------------- boundaries


@pytest.mark.parametrize("spending", ["obrien-fleming", "pocock"])
def test_boundaries_spend_exactly_alpha_against_scipy_multivariate_normal(spending) -> None:
    c = boundaries(TS, 0.05, spending)
    t = np.array(TS)
    for k in range(1, len(TS) + 1):
        cov = np.sqrt(np.minimum.outer(t[:k], t[:k]) / np.maximum.outer(t[:k], t[:k]))
        inside = stats.multivariate_normal.cdf(
            np.array(c[:k]),
            mean=np.zeros(k),
            cov=cov,
            lower_limit=-np.array(c[:k]),
            abseps=1e-7,
            releps=0,
            maxpts=50_000 * k,
            rng=np.random.default_rng(0),
        )
        assert 1 - inside == pytest.approx(spent_alpha(TS[k - 1], 0.05, spending), abs=2e-5)
    upper, lower = crossing_probabilities(c, TS)
    assert sum(upper) + sum(lower) == pytest.approx(0.05, abs=1e-9)
    assert upper == pytest.approx(lower)


def test_boundaries_match_simulated_brownian_paths() -> None:
    rng = np.random.default_rng(5)
    steps = rng.standard_normal((400_000, 5)) * np.sqrt(0.2)
    z = np.cumsum(steps, axis=1) / np.sqrt(np.array(TS))
    for spending in ("obrien-fleming", "pocock"):
        c = np.array(boundaries(TS, 0.05, spending))
        crossed = (np.abs(z) >= c).any(axis=1).mean()
        assert crossed == pytest.approx(0.05, abs=0.0015)
        naive = (np.abs(z) >= stats.norm.isf(0.025)).any(axis=1).mean()
        assert naive > 0.13  # testing at 0.05 five times
    obf = boundaries(TS, 0.05, "obrien-fleming")
    assert obf[0] == pytest.approx(stats.norm.isf(spent_alpha(0.2, 0.05, "obrien-fleming") / 2))
    assert obf[0] > 4 and 1.96 < obf[-1] < 2.1  # strict early, nearly nominal at the end
    poc = boundaries(TS, 0.05, "pocock")
    assert max(poc) - min(poc) < 0.06 and poc[-1] > obf[-1]


def test_look_fractions_and_nominal_levels() -> None:
    policy = CanaryPolicy()
    assert look_fractions(2, policy) == (0.2, 0.4)
    assert look_fractions(2, policy, information_fraction=0.5) == (0.25, 0.5)
    assert look_fractions(5, policy, information_fraction=0.7) == pytest.approx(
        (0.14, 0.28, 0.42, 0.56, 1.0)
    )
    assert look_fractions(3, policy, 0.5, history=[0.1, 0.3]) == (0.1, 0.3, 0.5)
    levels = [nominal_level(k, policy)[0] for k in range(1, 6)]
    assert levels == sorted(levels) and levels[-1] < 0.05 and levels[0] < 1e-4
    for bad in (0, 6):
        with pytest.raises(ValueError, match="outside the planned looks"):
            nominal_level(bad, policy)
    with pytest.raises(ValueError, match="history"):
        look_fractions(3, policy, 0.5, history=[0.1])
    with pytest.raises(ValueError, match="increase"):
        look_fractions(3, policy, 0.5, history=[0.3, 0.2])


def test_policy_is_declared_and_strict() -> None:
    p = CanaryPolicy()
    assert (p.primary, p.alpha, p.looks, p.spending) == ("ctr", 0.05, 5, "obrien-fleming")
    assert p.secondary == ("long_play_rate", "reformulation_rate")
    with pytest.raises(ValidationError):
        CanaryPolicy(alpah=0.1)
    with pytest.raises(ValidationError):
        CanaryPolicy(spending="haybittle")
    with pytest.raises(ValidationError):
        CanaryPolicy(alpha=0.7)


# --------------------------------------------------------------------------- the rules


@pytest.fixture(scope="module")
def looks_lift():
    """A big test with a real CTR gain: analyses of looks 1..5."""
    return [analyze(u, expected_treatment_share=0.5) for u in experiment(21, 12_000, lift=0.12)]


@pytest.fixture(scope="module")
def looks_null():
    return [analyze(u, expected_treatment_share=0.5) for u in experiment(22, 6_000)]


def test_promotes_a_significant_gain_with_the_numbers(looks_lift) -> None:
    policy = CanaryPolicy()
    d = decide(looks_lift[2], HEALTHY, look=3, information_fraction=None, policy=policy)
    assert d.action == "promote", d.reasons
    ctr = looks_lift[2]["metrics"]["ctr"]
    assert f"{ctr['lift'] * 100:+.2f} %" in d.reasons[0]
    assert "look 3 of 5" in d.reasons[0]
    assert d.nominal_alpha == pytest.approx(nominal_level(3, policy)[0])
    assert d.model_dump_json()  # serialisable


def test_holds_then_rolls_back_without_evidence(looks_null) -> None:
    policy = CanaryPolicy()
    d = decide(looks_null[1], HEALTHY, look=2, information_fraction=None, policy=policy)
    assert d.action == "hold"
    assert "no significant change yet on ctr" in d.reasons[-1]
    final = decide(looks_null[4], HEALTHY, look=5, information_fraction=None, policy=policy)
    assert final.action == "rollback"
    assert final.reasons[0].startswith("no evidence of benefit at the final look")
    assert f"p = {looks_null[4]['metrics']['ctr']['p_value']:.4f}" in final.reasons[0]


def test_rolls_back_on_sample_ratio_mismatch() -> None:
    users = experiment(23, 12_000, lift=0.12)[-1]
    treated = users.filter(pl.col("arm") == "treatment")
    lossy = pl.concat(
        [users.filter(pl.col("arm") == "control"), treated.head(treated.height - 600)]
    )
    a = analyze(lossy, expected_treatment_share=0.5)
    d = decide(a, HEALTHY, look=5, information_fraction=None, policy=CanaryPolicy())
    assert d.action == "rollback"
    assert "sample ratio mismatch" in d.reasons[0]
    assert f"{a['srm']['treatment_users']:,} treatment users" in d.reasons[0]


def test_rolls_back_on_error_rate_including_timeouts(looks_lift) -> None:
    stats_t = EndpointStats()
    for i in range(1000):  # what HttpRetriever records: a timeout is an error
        stats_t.requests += 1
        stats_t.latencies_ms.append(2000.0 if i % 40 == 0 else 30.0)
        if i % 40 == 0:
            stats_t.errors += 1
            stats_t.last_error = "TimeoutError: timed out"
    g = {"control": HEALTHY["control"], "treatment": stats_t.as_dict()}
    d = decide(looks_lift[2], g, look=3, information_fraction=None, policy=CanaryPolicy())
    assert d.action == "rollback"
    assert any("error rate 2.50 %" in r and "25 of 1,000 requests" in r for r in d.reasons)


def test_rolls_back_on_latency_absolute_and_relative(looks_lift) -> None:
    policy = CanaryPolicy()
    slow = {**HEALTHY, "treatment": {**HEALTHY["treatment"], "p99_ms": 350.0}}
    d = decide(looks_lift[2], slow, look=3, information_fraction=None, policy=policy)
    assert d.action == "rollback"
    assert any("p99 latency 350.0 ms exceeds the limit 200.0 ms" in r for r in d.reasons)
    slower = {
        "control": {**HEALTHY["control"], "p99_ms": 20.0},
        "treatment": {**HEALTHY["treatment"], "p99_ms": 150.0},
    }
    d = decide(looks_lift[2], slower, look=3, information_fraction=None, policy=policy)
    assert d.action == "rollback"
    assert any("exceeds control's 20.0 ms by 130.0 ms" in r for r in d.reasons)


def test_missing_treatment_guardrails_block_promotion(looks_lift) -> None:
    d = decide(
        looks_lift[2],
        {"control": HEALTHY["control"]},
        look=3,
        information_fraction=None,
        policy=CanaryPolicy(),
    )
    assert d.action == "hold"
    assert "no guardrail data for the treatment arm" in d.reasons[0]


def test_rolls_back_on_harm_to_a_secondary_metric() -> None:
    users = experiment(24, 12_000, lift=0.12, reformulation_lift=0.15)[-1]
    a = analyze(users, expected_treatment_share=0.5)
    assert a["metrics"]["ctr"]["better"]  # the primary alone would promote
    d = decide(a, HEALTHY, look=4, information_fraction=None, policy=CanaryPolicy())
    assert d.action == "rollback"
    (reason,) = d.reasons
    assert reason.startswith("significant harm on reformulation_rate")
    assert f"{a['metrics']['reformulation_rate']['lift'] * 100:+.2f} %" in reason


def test_minimum_sample_holds_a_promising_small_test() -> None:
    looks = experiment(25, 900, lift=0.4)
    a = analyze(looks[3], expected_treatment_share=0.5)
    assert a["metrics"]["ctr"]["better"]
    d = decide(a, HEALTHY, look=4, information_fraction=None, policy=CanaryPolicy())
    assert d.action == "hold"
    n = a["arms"]["control"]["users"]
    assert f"minimum sample not met: {n:,} control" in d.reasons[0]
    final = analyze(looks[4], expected_treatment_share=0.5)
    d = decide(final, HEALTHY, look=5, information_fraction=None, policy=CanaryPolicy())
    assert d.action == "rollback" and "no evidence of benefit" in d.reasons[0]
    assert "minimum sample not met" in d.reasons[0]


# --------------------------------------------------------------------------- known truth


def _naive(analysis: dict, policy: CanaryPolicy) -> str:
    """The same rules at the full alpha at every look (no spending)."""
    if any(analysis["metrics"][m]["worse"] for m in (policy.primary, *policy.secondary)):
        return "rollback"
    n = min(analysis["arms"][a]["users"] for a in ("control", "treatment"))
    if n >= policy.min_users_per_arm and analysis["metrics"][policy.primary]["better"]:
        return "promote"
    return "hold"


def _sequential(analyses: list[dict], policy: CanaryPolicy) -> tuple[str, int]:
    for k, a in enumerate(analyses, start=1):
        d = decide(a, HEALTHY, look=k, information_fraction=None, policy=policy)
        if d.action != "hold":
            return d.action, k
    raise AssertionError("the final look must decide")


def test_aa_sequential_false_promotion_stays_within_alpha() -> None:
    """300 seeded A/A tests, 5 looks each: spending keeps false promotions under alpha; testing
    at the full alpha at every look (same runs, same rules) is what it protects against."""
    policy, runs = CanaryPolicy(), 300
    promoted = naive_promoted = crossed = naive_crossed = 0
    cs = boundaries(TS, policy.alpha, policy.spending)
    for seed in range(runs):
        analyses = [analyze(u, expected_treatment_share=0.5) for u in experiment(seed, 2400)]
        promoted += _sequential(analyses, policy)[0] == "promote"
        for a in analyses:
            if (step := _naive(a, policy)) != "hold":
                naive_promoted += step == "promote"
                break
        z = [abs(a["metrics"]["ctr"]["z"]) for a in analyses]
        crossed += any(zk >= ck for zk, ck in zip(z, cs, strict=True))
        naive_crossed += max(z) >= stats.norm.isf(policy.alpha / 2)
    limit = _upper_99(policy.alpha, runs)
    assert promoted / runs <= policy.alpha
    assert crossed / runs <= limit  # the two-sided error of the boundaries on the primary
    assert naive_crossed / runs > limit  # without spending the two-sided error is ~0.14
    assert naive_promoted > promoted


@pytest.mark.slow
def test_planted_lift_is_promoted_with_the_documented_power() -> None:
    """+5 % CTR at the sample size required_users gives (from a pilot's variance): >= 80 %."""
    policy = CanaryPolicy()
    pilot = design_effect(experiment(10**6, 20_000)[-1])
    size = required_users(
        pilot["metric_value"],
        0.05,
        per_user_denominator=pilot["per_user_denominator"],
        design_effect=pilot["design_effect"],
        policy=policy,
    )
    assert 8_000 < size.total < 12_000 and size.control >= policy.min_users_per_arm
    runs = 400
    promoted = sum(
        _sequential(
            [
                analyze(u, expected_treatment_share=0.5)
                for u in experiment(seed, size.total, lift=0.05)
            ],
            policy,
        )[0]
        == "promote"
        for seed in range(runs)
    )
    assert promoted / runs >= 0.8, promoted / runs
    # at half the size the same lift is found far less often: the size is not oversized
    half = sum(
        _sequential(
            [
                analyze(u, expected_treatment_share=0.5)
                for u in experiment(seed, size.total // 2, lift=0.05)
            ],
            policy,
        )[0]
        == "promote"
        for seed in range(100)
    )
    assert half / 100 < 0.7


def test_required_users_follows_the_normal_approximation() -> None:
    policy = CanaryPolicy(looks=1)
    size = required_users(0.14, 0.05, per_user_denominator=24, design_effect=2.5, policy=policy)
    assert size.sequential_inflation == pytest.approx(1.0, abs=1e-6)
    z = stats.norm.isf(policy.alpha / 2) + stats.norm.isf(1 - size.primary_power)
    sd2 = 0.14 * 0.86 / 24 * 2.5 / 0.14**2
    hand = 4 * z**2 * sd2 / math.log(1.05) ** 2  # two equal arms
    assert size.total == pytest.approx(hand, rel=0.002)
    seq = required_users(0.14, 0.05, per_user_denominator=24, design_effect=2.5)
    assert 1.01 < seq.sequential_inflation < 1.1 and seq.total > size.total
    # the drift it implies reaches the primary power through the policy's boundaries
    theta = math.log(1.05) / math.sqrt(sd2 * (1 / seq.control + 1 / seq.treatment))
    cs = boundaries(TS, 0.05, "obrien-fleming")
    assert sum(crossing_probabilities(cs, TS, theta)[0]) == pytest.approx(
        seq.primary_power, abs=0.003
    )
    assert required_users(0.14, 0.025, per_user_denominator=24, design_effect=2.5).total > (
        3.5 * seq.total
    )
    with pytest.raises(ValueError, match="relative_lift"):
        required_users(0.14, 0.0, per_user_denominator=24)
    with pytest.raises(ValueError, match="baseline_rate"):
        required_users(1.4, 0.05, per_user_denominator=24)


# --------------------------------------------------------------------------- the real simulator


def _arm(user_ids: pl.Series, salt: str) -> pl.Series:
    h = [int.from_bytes(hashlib.sha256(f"{salt}:{u}".encode()).digest()[:8]) for u in user_ids]
    return pl.Series("arm", ["treatment" if v < 2**63 else "control" for v in h])


@pytest.mark.slow
def test_aa_on_the_simulator_is_centred_and_promotes_within_alpha(tiny_world) -> None:
    """Seeded A/A tests on the tiny world: both arms production retrieval, users split by a
    salted hash, one look per day over 5 days."""
    cfg, retr = tiny_world.cfg, production_retriever(tiny_world)
    policy = CanaryPolicy(min_users_per_arm=50)
    runs, t0 = 200, time.perf_counter()
    z_final, promoted = [], 0
    for seed in range(runs):
        days, analyses = [], []
        for day in range(1, policy.looks + 1):
            run = run_online(tiny_world, retr, day=cfg.days + day, seed=seed)
            u = user_table(
                run.search_log,
                run.requests,
                window_s=cfg.reformulation_window_s,
                long_play_ms=cfg.long_play_ms,
            )
            days.append(u.with_columns(_arm(u["user_id"], f"aa-{seed}")))
            analyses.append(analyze(add_user_tables(*days), expected_treatment_share=0.5))
        promoted += _sequential(analyses, policy)[0] == "promote"
        z_final.append(analyses[-1]["metrics"]["ctr"]["z"])
    z = np.array(z_final)
    assert abs(z.mean()) < 3 / math.sqrt(runs)  # lifts centred on 0
    assert 0.8 < z.std() < 1.2  # and the clustered variance is right on real traffic
    assert promoted / runs <= _upper_99(policy.alpha, runs)
    print(
        f"{runs} A/A runs in {time.perf_counter() - t0:.0f} s: {promoted} promoted, "
        f"final z mean {z.mean():+.3f} sd {z.std():.3f}"
    )


def test_each_look_tests_at_its_own_nominal_level(looks_lift) -> None:
    """p = 0.012 promotes at look 4 (nominal 0.024) but not at look 3 (0.011) nor earlier; a
    harm at p = 0.02 rolls back only where the level allows it."""
    policy = CanaryPolicy()
    a = copy.deepcopy(looks_lift[4])
    for name in policy.secondary:
        a["metrics"][name].update(z=0.5, p_value=float(2 * stats.norm.sf(0.5)))
    a["metrics"]["ctr"].update(z=2.5, p_value=float(2 * stats.norm.sf(2.5)))
    actions = [decide(a, HEALTHY, look=k, policy=policy).action for k in range(1, 6)]
    assert actions == ["hold", "hold", "hold", "promote", "promote"]
    a["metrics"]["ctr"].update(z=0.3, p_value=float(2 * stats.norm.sf(0.3)))
    z = stats.norm.isf(0.01)  # two-sided p = 0.02, in the bad direction
    a["metrics"]["reformulation_rate"].update(z=z, p_value=0.02)
    actions = [decide(a, HEALTHY, look=k, policy=policy).action for k in range(1, 6)]
    assert actions == ["hold", "hold", "hold", "rollback", "rollback"]
    # Pocock spends early: p = 0.01 is harm at its first look (0.0148), not at O'Brien-Fleming's
    a["metrics"]["reformulation_rate"].update(z=stats.norm.isf(0.005), p_value=0.01)
    assert decide(a, HEALTHY, look=1, policy=CanaryPolicy(spending="pocock")).action == "rollback"
    assert decide(a, HEALTHY, look=1, policy=policy).action == "hold"
