"""Benchmark: the canary's error rates when `crops abtest analyze` runs once a day on logs.

Synthetic logs with a known truth (`crops.abtest.synthlogs`, user-clustered CTR 0.14, 50/50
split, 5 days) are written one day at a time, and after each day `analyze_logs` is invoked as
the daily CronJob would be: `as_of` an hour after the day ends, one ledger on disk per
experiment, a fresh report folder per invocation, no plots. Each experiment runs in its own
temporary folder; seeds are spread over 2 processes (`--procs`).

1. A/A (no lift), `--seeds` experiments of `--users` users: the share whose final decision is
   promote (false promotions; the policy's two-sided alpha 0.05 over 5 O'Brien-Fleming looks
   promises <= alpha / 2 = 0.025), and the share rolled back for harm (significant harm on
   any of the three metrics, SRM or a guardrail), with Clopper-Pearson 95 % intervals.
2. The naive way on the same data and the same per-look statistics: every daily run starts
   over at look 1 of 1 on the cumulative data (as if the ledger were lost and the whole alpha
   spent on each run), and the rollout acts on the first promote (or harm rollback) of the 5
   days; a "no evidence" rollback does not stop it. Reference for the headline ratio: the
   ledger's sequential test on the same data (naive / sequential false promotions).
   `analyze_logs` cannot express this itself: with a fresh ledger and looks=1, look 1 always
   covers the experiment's first day (the start is the first treatment request's day), so
   each daily run repeats the day-1 test. The naive look is therefore computed with the
   functions `take_look` uses (`user_sums`, `abstats.analyze`, `guardrails`, `sequential.decide`)
   on the rows through day d; its z on day d equals the ledger's look d + 1.
3. Power: `sequential.required_users` sizes the test for a planted +10 % CTR lift (the per-user
   impressions and design effect derived from synthlogs' parameters, and checked on a pilot
   A/A), then `--power-seeds` experiments of that size run through the ledger; the share
   promoted is compared with the 80 % power the size targets.

The information fractions the synthetic traffic actually reaches at each look (from the
primary's standard error) are printed, with the false-promotion rate and power the planned
boundaries give at those fractions: the analysis spends alpha at t = k / 5 whatever the traffic.

    python bench/bench_abtest_validation.py --json /tmp/abtest_validation.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from crops.abtest.analyze import (
    AnalyzeConfig,
    analyze_logs,
    experiment_hygiene,  # the hygiene analyze_logs applies: needed for the naive look
    guardrails,
)
from crops.abtest.layout import day_start
from crops.abtest.logs import read_logs
from crops.abtest.synthlogs import CONCENTRATION, CTR, SynthSpec, write_logs
from crops.abtest.usersums import user_sums
from crops.evaluate.abstats import analyze, design_effect
from crops.evaluate.sequential import (
    CanaryPolicy,
    _drift_for_power,
    boundaries,
    crossing_probabilities,
    decide,
    required_users,
)
from crops.schema import LONG_PLAY_MS, REFORMULATION_WINDOW_S

POLICY = CanaryPolicy(min_users_per_arm=50, max_p99_ms=1e6, max_p99_increase_ms=1e6)
NAIVE = CanaryPolicy(**{**POLICY.model_dump(), "looks": 1})
LIFT = 0.10  # planted relative CTR lift for the power run
POWER = 0.8
NO_EVIDENCE = "no evidence of benefit"
POWER_SEED_BASE = 1_000_000  # power seeds are disjoint from the A/A seeds
MAX_SKEW_S = AnalyzeConfig.model_fields["max_skew_s"].default  # analyze_logs' default


def as_of(spec: SynthSpec, d: int) -> datetime:
    """An hour after day d (0-based) of the experiment ends: when the CronJob looks."""
    return day_start(spec.start + timedelta(days=d)) + timedelta(days=1, hours=1)


def outcome(action: str, reasons: list[str]) -> tuple[str, list[str]]:
    """(promote | harm | no_evidence | hold, the harm reasons' tags)."""
    if action != "rollback":
        return action, []
    if reasons and reasons[0].startswith(NO_EVIDENCE):
        return "no_evidence", []
    tags = []
    for r in reasons:
        if r.startswith("significant harm on "):
            tags.append("harm:" + r.removeprefix("significant harm on ").split()[0])
        elif r.startswith("sample ratio mismatch"):
            tags.append("srm")
        else:
            tags.append("guardrail")
    return "harm", tags


def naive_look(logs: Path, spec: SynthSpec, d: int, policy: CanaryPolicy = NAIVE) -> dict:
    """Look 1 of 1 on all rows through day d: the statistics of `take_look`, no ledger."""
    read = read_logs(str(logs))
    control, candidate = spec.hashes
    search, requests, _ = experiment_hygiene(
        read,
        read.quarantine,
        control=control,
        candidate=candidate,
        latest_ok=as_of(spec, d) + timedelta(seconds=MAX_SKEW_S),
    )
    start = day_start(spec.start)
    end = start + timedelta(days=d + 1)
    window = (pl.col("ts") >= start) & (pl.col("ts") < end)
    s, r = search.filter(window), requests.filter(window)
    users, _ = user_sums(s, r, window_s=REFORMULATION_WINDOW_S, long_play_ms=LONG_PLAY_MS)
    analysis = analyze(
        users,
        alpha=policy.alpha,
        expected_treatment_share=spec.treatment_share,
        srm_threshold=policy.srm_p,
    )
    decision = decide(
        analysis, guardrails(r), look=1, information_fraction=1.0, history=[], policy=policy
    )
    ctr = analysis["metrics"][policy.primary]
    kind, tags = outcome(decision.action, decision.reasons)
    return {"outcome": kind, "tags": tags, "z": ctr.get("z"), "log_se": ctr.get("log_se")}


def run_experiment(job: tuple[SynthSpec, bool]) -> dict[str, Any]:
    """Five daily invocations through one ledger (and the naive look each day if asked)."""
    spec, with_naive = job
    invoke_s: list[float] = []
    naive: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="abval-") as tmp:
        root = Path(tmp)
        logs = root / "logs"
        for d in range(spec.days):
            write_logs(spec, logs, days=range(d, d + 1))
            cfg = AnalyzeConfig(
                logs=str(logs),
                out=root / f"report-{d}",
                ledger=str(root / "ledger"),
                treatment_share=spec.treatment_share,
                policy=POLICY,
                as_of=as_of(spec, d),
            )
            t0 = time.perf_counter()
            rep = analyze_logs(cfg, plots=False)
            invoke_s.append(time.perf_counter() - t0)
            if with_naive:
                naive.append(naive_look(logs, spec, d))
    kind, tags = outcome(rep["decision"]["action"], rep["decision"]["reasons"])
    lift = [h["metrics"][POLICY.primary]["lift"] for h in rep["history"]]
    out: dict[str, Any] = {
        "seed": spec.seed,
        "users": spec.users,
        "sequential": {
            "outcome": kind,
            "tags": tags,
            "look": rep["decision"]["look"],
            "z": [x["z"] for x in lift],
            "log_se": [x["log_se"] for x in lift],
        },
        "invoke_s": invoke_s,
    }
    if with_naive:
        acted = next((i for i, n in enumerate(naive) if n["outcome"] in ("promote", "harm")), None)
        out["naive"] = {
            "outcome": naive[acted]["outcome"] if acted is not None else "no_evidence",
            "tags": naive[acted]["tags"] if acted is not None else [],
            "day": acted,
            "z": [n["z"] for n in naive],
            "log_se": [n["log_se"] for n in naive],
        }
    return out


def run_many(
    specs: list[SynthSpec], with_naive: bool, procs: int, label: str, every: int = 20
) -> list[dict]:
    """Run experiments over `procs` processes (spawned, one polars thread each), in seed order."""
    jobs = [(s, with_naive) for s in specs]
    results: list[dict] = []
    t0 = time.perf_counter()

    def note(r: dict) -> None:
        results.append(r)
        n = len(results)
        if n % every == 0 or n == len(jobs):
            seq = sum(x["sequential"]["outcome"] == "promote" for x in results)
            extra = ""
            if with_naive:
                nv = sum(x["naive"]["outcome"] == "promote" for x in results)
                extra = f", naive promoted {nv}"
            print(
                f"  [{label}] {n}/{len(jobs)} experiments, {time.perf_counter() - t0:.0f} s:"
                f" sequential promoted {seq}{extra}",
                flush=True,
            )

    if procs <= 1:
        for j in jobs:
            note(run_experiment(j))
    else:
        with mp.get_context("spawn").Pool(procs) as pool:
            for r in pool.imap_unordered(run_experiment, jobs):
                note(r)
    return sorted(results, key=lambda r: r["seed"])


def rate(k: int, n: int) -> dict[str, Any]:
    """k of n with the Clopper-Pearson 95 % interval."""
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": k, "n": n, "rate": k / n, "ci95": [float(ci.low), float(ci.high)]}


def fmt(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['k']:4d}/{r['n']} = {r['rate']:.4f}  (95 % CI {lo:.4f} to {hi:.4f})"


def tally(results: list[dict], arm: str) -> dict[str, Any]:
    n = len(results)
    kinds = [r[arm]["outcome"] for r in results]
    tags: dict[str, int] = {}
    for r in results:
        for t in set(r[arm]["tags"]):
            tags[t] = tags.get(t, 0) + 1
    return {
        "false_promotion": rate(kinds.count("promote"), n),
        "harm_rollback": rate(kinds.count("harm"), n),
        "no_evidence_rollback": kinds.count("no_evidence"),
        "hold": kinds.count("hold"),
        "harm_reasons": dict(sorted(tags.items())),
    }


def observed_fractions(results: list[dict], arm: str) -> list[float] | None:
    """Median information fraction reached at each look: (se at the last look / se at k)^2."""
    rows = [r[arm]["log_se"] for r in results if len(r[arm]["log_se"]) == POLICY.looks]
    rows = [x for x in rows if all(v is not None and v > 0 for v in x)]
    if not rows:
        return None
    se = np.array(rows, dtype=float)
    return [float(v) for v in np.median((se[:, -1:] / se) ** 2, axis=0)]


# --------------------------------------------------------------------------- sizing


def synth_per_user(spec: SynthSpec) -> dict[str, float]:
    """Impressions per user over the test and CTR's design effect, from synthlogs' model.

    A user arrives on a uniform day a of D, is active that day and on each later day with
    probability 1/2, and makes 1 + Poisson(0.6) requests of k impressions per active day
    (no errors). With A active days: E[A] = 1 + (D - 1) / 4, E[A^2] from the binomial; the
    user's CTR is Beta with a + b = C (intra-user correlation 1 / (C + 1)), so the per-user
    delta-method variance of the CTR is R (1 - R) / x_bar times the design effect
    C / (C + 1) + E[n^2] / (x_bar (C + 1)), n the user's impressions.
    """
    k, days, c = spec.impressions_per_request, spec.days, CONCENTRATION
    m = np.arange(days)[::-1]  # later days after each arrival day
    ea = float(np.mean(1 + m / 2))
    ea2 = float(np.mean(1 + m + m / 4 + m**2 / 4))
    er2 = 0.6 * ea + 1.6**2 * ea2  # requests over the test: A + Poisson(0.6 A)
    xbar = k * 1.6 * ea
    en2 = k**2 * er2
    return {"per_user_denominator": xbar, "design_effect": c / (c + 1) + en2 / (xbar * (c + 1))}


def pilot(users: int, seed: int) -> dict[str, float]:
    """Impressions per user and the CTR design effect measured on one large A/A run."""
    spec = SynthSpec(users=users, seed=seed)
    with tempfile.TemporaryDirectory(prefix="abval-pilot-") as tmp:
        logs = Path(tmp) / "logs"
        write_logs(spec, logs)
        read = read_logs(str(logs))
        control, candidate = spec.hashes
        search, requests, _ = experiment_hygiene(
            read,
            read.quarantine,
            control=control,
            candidate=candidate,
            latest_ok=as_of(spec, spec.days - 1),
        )
        u, _ = user_sums(
            search, requests, window_s=REFORMULATION_WINDOW_S, long_play_ms=LONG_PLAY_MS
        )
    return design_effect(u)


def planned_vs_observed(fractions: list[float] | None, power_drift: float) -> dict[str, Any]:
    """False promotion and power of the planned boundaries at the observed fractions."""
    planned = tuple(j / POLICY.looks for j in range(1, POLICY.looks + 1))
    bounds = boundaries(planned, POLICY.alpha, POLICY.spending)
    out: dict[str, Any] = {
        "boundaries_z": [round(b, 4) for b in bounds],
        "planned_fractions": list(planned),
        "planned_false_promotion": sum(crossing_probabilities(bounds, planned, 0.0)[0]),
        "planned_primary_power": sum(crossing_probabilities(bounds, planned, power_drift)[0]),
    }
    if fractions:
        ts = [min(max(t, 1e-6), 1.0) for t in fractions]
        ts = [t if i == 0 else max(t, ts[i - 1] + 1e-6) for i, t in enumerate(ts)]
        ts[-1] = 1.0
        out["observed_fractions"] = fractions
        out["observed_false_promotion"] = sum(crossing_probabilities(bounds, ts, 0.0)[0])
        out["observed_primary_power"] = sum(crossing_probabilities(bounds, ts, power_drift)[0])
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=200, help="A/A experiments")
    ap.add_argument("--power-seeds", type=int, default=100, help="experiments with the lift")
    ap.add_argument("--users", type=int, default=2_000, help="users per A/A experiment")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--pilot-users", type=int, default=20_000)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    os.environ.setdefault("POLARS_MAX_THREADS", "1")  # the spawned workers read it at import

    t_all = time.perf_counter()
    print(
        f"A/A on logged traffic: {args.seeds} seeds x {args.users:,} users, 5 daily invocations"
        f" through one ledger each, {args.procs} processes, {os.cpu_count()} cores shared",
        flush=True,
    )
    t0 = time.perf_counter()
    aa = run_many(
        [SynthSpec(users=args.users, seed=s) for s in range(args.seeds)], True, args.procs, "A/A"
    )
    aa_s = time.perf_counter() - t0
    seq, naive = tally(aa, "sequential"), tally(aa, "naive")
    invoke = np.array([x for r in aa for x in r["invoke_s"]])
    mismatch = sum(
        any(
            abs(a - b) > 1e-9
            for a, b in zip(r["sequential"]["z"], r["naive"]["z"], strict=False)
            if a is not None and b is not None
        )
        for r in aa
    )
    sp, nv = seq["false_promotion"], naive["false_promotion"]
    ratio = nv["rate"] / sp["rate"] if sp["k"] else math.inf
    alpha = POLICY.alpha
    print(
        f"A/A done in {aa_s:.0f} s; analyze_logs per invocation: mean {invoke.mean():.3f} s,"
        f" p95 {np.percentile(invoke, 95):.3f} s, max {invoke.max():.3f} s"
    )
    print(f"  sequential (ledger, {POLICY.looks} O'Brien-Fleming looks, alpha {alpha}):")
    print(f"    false promotion   {fmt(sp)}   theory <= {alpha / 2}, must be <= {alpha}")
    print(f"    harm rollback     {fmt(seq['harm_rollback'])}   reasons {seq['harm_reasons']}")
    print(f"    no-evidence rollback {seq['no_evidence_rollback']}, still holding {seq['hold']}")
    print("  naive (each daily run restarts at look 1 of 1 on cumulative data, first act counts):")
    print(f"    false promotion   {fmt(nv)}")
    print(f"    harm rollback     {fmt(naive['harm_rollback'])}   reasons {naive['harm_reasons']}")
    print(f"  naive z differs from the ledger's look z in {mismatch} of {len(aa)} experiments")
    ratio_s = f"{ratio:.2f}x" if math.isfinite(ratio) else "inf (sequential promoted none)"
    print(
        f"  false promotions naive / sequential: {ratio_s}"
        " (reference: the ledger's sequential test on the same data)",
        flush=True,
    )

    # power at the documented sample size
    derived = synth_per_user(SynthSpec())
    t0 = time.perf_counter()
    measured = pilot(args.pilot_users, seed=2 * POWER_SEED_BASE)
    size = required_users(
        CTR,
        LIFT,
        per_user_denominator=derived["per_user_denominator"],
        design_effect=derived["design_effect"],
        treatment_share=0.5,
        power=POWER,
        policy=POLICY,
    )
    print(
        f"Power: +{LIFT:.0%} CTR on {CTR}; synthlogs gives {derived['per_user_denominator']:.2f}"
        f" impressions per user and design effect {derived['design_effect']:.3f} (pilot A/A of"
        f" {args.pilot_users:,} users: {measured['per_user_denominator']:.2f},"
        f" {measured['design_effect']:.3f}, CTR {measured['metric_value']:.4f})"
    )
    print(
        f"  required_users: {size.total:,} users ({size.control:,} + {size.treatment:,}), fixed"
        f" test {size.fixed_total:,}, sequential inflation {size.sequential_inflation:.3f},"
        f" decision power {POWER} (primary {size.primary_power:.3f})"
    )
    print(
        "  assumptions vs synth: rate metric with the mean denominator over the whole test and"
        " a design effect (met: derived above); equal relative variance in both arms (met: the"
        " lift scales each treated user's Beta CTR); information at look k = k / 5 (NOT met:"
        " users arrive and return over the days, see the fractions below)",
        flush=True,
    )
    pw = run_many(
        [
            SynthSpec(users=size.total, ctr_lift=LIFT, seed=POWER_SEED_BASE + s)
            for s in range(args.power_seeds)
        ],
        False,
        args.procs,
        "power",
    )
    pw_s = time.perf_counter() - t0
    ptally = tally(pw, "sequential")
    power = rate(sum(r["sequential"]["outcome"] == "promote" for r in pw), len(pw))
    looks_at = [r["sequential"]["look"] for r in pw if r["sequential"]["outcome"] == "promote"]
    print(f"Power done in {pw_s:.0f} s")
    print(f"  promoted          {fmt(power)}   target {POWER}")
    print(
        f"  harm rollback {ptally['harm_rollback']['k']}, no-evidence rollback"
        f" {ptally['no_evidence_rollback']}; promotions by look"
        f" {dict(sorted({k: looks_at.count(k) for k in set(looks_at)}.items()))}"
    )

    # what the planned boundaries promise at the information the traffic actually reaches
    spl = size.primary_power
    planned = tuple(j / POLICY.looks for j in range(1, POLICY.looks + 1))
    drift = _drift_for_power(boundaries(planned, POLICY.alpha, POLICY.spending), planned, spl)
    theory = planned_vs_observed(observed_fractions(aa, "naive"), drift)
    obs = theory.get("observed_fractions")
    print(
        f"  information fractions reached at looks 1-5 (median over A/A seeds):"
        f" {[round(t, 3) for t in obs] if obs else 'n/a'} (planned {list(planned)})"
    )
    if obs:
        print(
            f"  planned boundaries {theory['boundaries_z']} at those fractions: false promotion"
            f" {theory['observed_false_promotion']:.4f} (planned"
            f" {theory['planned_false_promotion']:.4f}), primary power at the sized drift"
            f" {theory['observed_primary_power']:.3f} (planned"
            f" {theory['planned_primary_power']:.3f})"
        )
    total_s = time.perf_counter() - t_all
    print(f"wall time {total_s:.0f} s")

    if args.json:
        figures = {
            "policy": POLICY.model_dump(mode="json"),
            "cores": os.cpu_count(),
            "procs": args.procs,
            "aa": {
                "seeds": args.seeds,
                "users": args.users,
                "sequential": seq,
                "naive": naive,
                "ratio_naive_over_sequential": ratio if math.isfinite(ratio) else None,
                "reference": "the ledger's sequential test on the same data",
                "naive_z_mismatches": mismatch,
                "invoke_s": {
                    "mean": float(invoke.mean()),
                    "p95": float(np.percentile(invoke, 95)),
                    "max": float(invoke.max()),
                },
                "seconds": aa_s,
            },
            "power": {
                "seeds": args.power_seeds,
                "lift": LIFT,
                "baseline_ctr": CTR,
                "derived": derived,
                "pilot": measured,
                "required_users": size.as_dict(),
                "target_power": POWER,
                "promoted": power,
                "outcomes": {k: v for k, v in ptally.items() if k != "false_promotion"},
                "promoted_at_look": looks_at,
                "seconds": pw_s,
            },
            "theory": theory,
            "wall_s": total_s,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
