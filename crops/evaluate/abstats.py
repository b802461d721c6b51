"""Statistics of an online A/B test: per-user sums, ratio metrics with clustered intervals, lifts,
the sample-ratio-mismatch check.

The randomisation unit is the user, so the analysis unit is the user too. Every metric is a
ratio of sums over users (clicks / impressions, long plays / clicks, reformulated requests /
requests), and one user's impressions are correlated (a user who likes the results clicks many
of them). Treating impressions as independent Bernoulli trials understates the variance and
promotes noise; the delta method on user-level sums does not (tests/evaluate/test_abstats.py
measures both coverages). Output is plain JSON: numbers, strings, booleans, and None where a number
cannot be estimated (never NaN or inf).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from scipy import stats

from crops.schema import long_play
from crops.world.summary import request_pairs

ARMS = ("control", "treatment")
COUNTS = ("impressions", "clicks", "long_plays", "requests", "reformulated")
# metric -> (numerator column, denominator column, good direction: +1 higher is better)
METRICS: dict[str, tuple[str, str, int]] = {
    "ctr": ("clicks", "impressions", +1),
    "long_play_rate": ("long_plays", "clicks", +1),
    "reformulation_rate": ("reformulated", "requests", -1),
}


def _frame(table: pl.DataFrame | pa.Table, name: str, columns: tuple[str, ...]) -> pl.DataFrame:
    df = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    if not isinstance(df, pl.DataFrame):
        raise TypeError(f"{name}: expected a table, got {type(table).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    return df


def user_table(
    search_log: pl.DataFrame | pa.Table,
    requests: pl.DataFrame | pa.Table,
    *,
    window_s: float,
    long_play_ms: int,
) -> pl.DataFrame:
    """One row per user of an online run: impressions, clicks, long_plays, requests, reformulated.

    Same definitions as `crops.world.summary.behaviour` (it reuses `request_pairs` and
    `long_play`), so the column sums reproduce its rates exactly. `requests` lists every request,
    so a user whose searches all came back empty (no log rows) is kept, with zero impressions.
    Request and session ids are unique only within one run: call this per run (per arm and day)
    and add the tables with `add_user_tables`, never on concatenated logs.
    """
    log = _frame(
        search_log,
        "search_log",
        ("user_id", "request_id", "stage", "clicked", "watch_ms", "duration_ms"),
    )
    req = _frame(requests, "requests", ("request_id", "session_id", "user_id", "ts", "query"))
    unknown = (
        log.select("request_id")
        .unique()
        .join(req.select("request_id"), on="request_id", how="anti")
    )
    if unknown.height:
        raise ValueError(
            f"search_log has {unknown.height} request id(s) missing from requests "
            f"(e.g. {unknown['request_id'][0]}): logs and requests must come from the same run"
        )
    lp = long_play(pl.col("watch_ms"), pl.col("duration_ms"), long_play_ms)
    shown = (
        log.lazy()
        .filter(pl.col("stage") == "shown")
        .group_by("user_id")
        .agg(
            pl.len().cast(pl.Int64).alias("impressions"),
            pl.col("clicked").sum().cast(pl.Int64).alias("clicks"),
            (pl.col("clicked") & lp).sum().cast(pl.Int64).alias("long_plays"),
        )
    )
    pairs = (
        request_pairs(req.lazy(), window_s)
        .group_by("user_id")
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            pl.col("reformulated").sum().cast(pl.Int64).alias("reformulated"),
        )
    )
    out = pairs.join(shown, on="user_id", how="left").collect()
    return out.select("user_id", *(pl.col(c).fill_null(0).cast(pl.Int64) for c in COUNTS)).sort(
        "user_id"
    )


def add_user_tables(*tables: pl.DataFrame) -> pl.DataFrame:
    """Sum user tables of several runs (days of a test) user by user, keeping any `arm` column.

    A user found in two arms is an assignment bug and an error.
    """
    if not tables:
        raise ValueError("add_user_tables: no tables")
    keys = ["user_id", "arm"] if all("arm" in t.columns for t in tables) else ["user_id"]
    out = (
        pl.concat([t.select(*keys, *COUNTS) for t in tables], how="vertical_relaxed")
        .group_by(keys)
        .agg(pl.col(c).sum().cast(pl.Int64) for c in COUNTS)
        .sort(keys)
    )
    if out["user_id"].is_duplicated().any():
        raise ValueError("add_user_tables: a user appears in both arms")
    return out


def _num(x: float | None) -> float | None:
    """A JSON-safe float: None for NaN/inf."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def ratio_stats(num: np.ndarray, den: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """Ratio of user-clustered sums R = sum(y) / sum(x), with its delta-method interval.

    With n users, per-user sums (y_i, x_i), mean denominator x_bar and residuals
    d_i = y_i - R x_i, the delta method gives Var(R) ~= sum(d_i^2) / (n (n - 1) x_bar^2), i.e.
    (s_yy - 2 R s_xy + R^2 s_xx) / (n x_bar^2) with sample (co)variances over users. Users
    are independent, so correlated events within a user are accounted for. Interval: R +- z se,
    clipped to [0, 1] (every metric here is a proportion). Users with a zero denominator still
    count in n and x_bar, as they do in the ratio of means.
    """
    y, x = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = int(y.size)
    out: dict[str, Any] = {
        "users": n,
        "numerator": int(y.sum()),
        "denominator": int(x.sum()),
        "value": None,
        "se": None,
        "ci_low": None,
        "ci_high": None,
        "status": "ok",
    }
    if n < 2:
        return {**out, "status": "insufficient data", "reason": f"{n} user(s); need at least 2"}
    if x.sum() <= 0:
        return {**out, "status": "insufficient data", "reason": "zero denominator"}
    r = y.sum() / x.sum()
    d = y - r * x
    se = math.sqrt(float(d @ d) / (n * (n - 1))) / x.mean()
    out["value"] = _num(r)
    if not se > 0:
        return {**out, "status": "insufficient data", "reason": "zero variance across users"}
    z = stats.norm.isf(alpha / 2)
    out.update(se=_num(se), ci_low=_num(max(0.0, r - z * se)), ci_high=_num(min(1.0, r + z * se)))
    return out


def lift_stats(ctl: dict[str, Any], trt: dict[str, Any], direction: int, alpha: float) -> dict:
    """Relative lift treatment / control - 1: delta method on the log ratio (not Fieller).

    Var(log Rt - log Rc) ~= (se_t / Rt)^2 + (se_c / Rc)^2 (independent arms); the interval is
    exp(log ratio +- z se) - 1 and the p-value two-sided from the normal. The interval excludes
    0 exactly when p < alpha, so `better`/`worse` agree with both.
    """
    out: dict[str, Any] = {
        "direction": direction,
        "control": ctl["value"],
        "treatment": trt["value"],
        "lift": None,
        "lift_ci_low": None,
        "lift_ci_high": None,
        "log_se": None,
        "z": None,
        "p_value": None,
        "significant": False,
        "better": False,
        "worse": False,
        "status": "ok",
    }
    why = [
        f"{arm}: {s['reason']}"
        for arm, s in (("control", ctl), ("treatment", trt))
        if s["status"] != "ok"
    ]
    if not why and (ctl["value"] <= 0 or trt["value"] <= 0):
        why.append("a rate of zero has no relative lift")
    if why:
        return {**out, "status": "insufficient data", "reason": "; ".join(why)}
    log_ratio = math.log(trt["value"] / ctl["value"])
    se = math.hypot(trt["se"] / trt["value"], ctl["se"] / ctl["value"])
    zcrit = stats.norm.isf(alpha / 2)
    z = log_ratio / se
    p = float(2 * stats.norm.sf(abs(z)))
    sig = p < alpha
    out.update(
        lift=_num(math.expm1(log_ratio)),
        lift_ci_low=_num(math.expm1(log_ratio - zcrit * se)),
        lift_ci_high=_num(math.expm1(log_ratio + zcrit * se)),
        log_se=_num(se),
        z=_num(z),
        p_value=_num(p),
        significant=bool(sig),
        better=bool(sig and z * direction > 0),
        worse=bool(sig and z * direction < 0),
    )
    return out


def _users_frame(users: pl.DataFrame, *, need_arm: bool) -> pl.DataFrame:
    cols = ("user_id", *COUNTS) + (("arm",) if need_arm else ())
    df = _frame(users, "users", cols)
    for c in COUNTS:
        if not df.schema[c].is_integer():
            raise ValueError(f"users: column {c} must be integer counts, got {df.schema[c]}")
        if df.height and df[c].null_count():
            raise ValueError(f"users: column {c} has nulls")
        if df.height and df[c].min() < 0:
            raise ValueError(f"users: column {c} has negative counts")
    for name, (num, den, _) in METRICS.items():
        bad = df.filter(pl.col(num) > pl.col(den))
        if bad.height:
            raise ValueError(
                f"users: {num} > {den} for {bad.height} user(s) (e.g. user "
                f"{bad['user_id'][0]}), so {name} would exceed 1"
            )
    return df


def arm_summary(users: pl.DataFrame, *, alpha: float = 0.05) -> dict[str, Any]:
    """One arm's metrics: value, (1 - alpha) delta-method interval, users and totals."""
    df = _users_frame(users, need_arm=False)
    return {
        "users": df.height,
        "metrics": {
            m: ratio_stats(df[num].to_numpy(), df[den].to_numpy(), alpha)
            for m, (num, den, _) in METRICS.items()
        },
    }


def srm_check(
    n_control: int, n_treatment: int, expected_treatment_share: float, threshold: float = 0.001
) -> dict[str, Any]:
    """Sample-ratio mismatch: chi-square of the user counts against the planned split."""
    total = n_control + n_treatment
    out: dict[str, Any] = {
        "control_users": n_control,
        "treatment_users": n_treatment,
        "expected_treatment_share": expected_treatment_share,
        "observed_treatment_share": _num(n_treatment / total) if total else None,
        "chi2": None,
        "p_value": None,
        "threshold": threshold,
        "flagged": False,
    }
    if total == 0:
        return out
    expected = [total * (1 - expected_treatment_share), total * expected_treatment_share]
    res = stats.chisquare([n_control, n_treatment], expected)
    out.update(
        chi2=_num(res.statistic),
        p_value=_num(res.pvalue),
        flagged=bool(res.pvalue < threshold),
    )
    return out


def analyze(
    users: pl.DataFrame,
    *,
    alpha: float = 0.05,
    expected_treatment_share: float,
    srm_threshold: float = 0.001,
) -> dict[str, Any]:
    """The A/B analysis of user-level sums (`arm` "control"/"treatment", `user_id`, COUNTS).

    Per arm and metric: value, (1 - alpha) delta-method interval, users, totals. Per metric:
    relative lift with interval and two-sided p-value (delta method on the log ratio), and
    `better`/`worse` by the metric's good direction at level alpha (a fixed-horizon reading;
    the canary's sequential levels are in `crops.evaluate.sequential`). SRM: chi-square of user
    counts against the planned share, flagged when p < srm_threshold. Each user must be in one
    arm exactly once; an arm without users yields "insufficient data" entries, not errors.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < expected_treatment_share < 1:
        raise ValueError(
            f"expected_treatment_share must be in (0, 1), got {expected_treatment_share}"
        )
    df = _users_frame(users, need_arm=True)
    other = set(df["arm"].unique().to_list()) - set(ARMS)
    if other:
        raise ValueError(f"users: unknown arm(s) {sorted(map(str, other))}; expected {ARMS}")
    if df["user_id"].is_duplicated().any():
        dup = df.filter(pl.col("user_id").is_duplicated())["user_id"][0]
        raise ValueError(
            f"users: user {dup} appears more than once (sum days per user first; "
            "a user must stay in one arm)"
        )
    arms = {a: arm_summary(df.filter(pl.col("arm") == a), alpha=alpha) for a in ARMS}
    metrics = {
        m: lift_stats(arms["control"]["metrics"][m], arms["treatment"]["metrics"][m], d, alpha)
        for m, (_, _, d) in METRICS.items()
    }
    return {
        "alpha": alpha,
        "confidence": 1 - alpha,
        "method": "delta method on user-clustered sums; lift on the log ratio",
        "arms": arms,
        "metrics": metrics,
        "srm": srm_check(
            arms["control"]["users"],
            arms["treatment"]["users"],
            expected_treatment_share,
            srm_threshold,
        ),
    }


def bootstrap_ci(
    num: np.ndarray,
    den: np.ndarray,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(num) / sum(den), resampling users (seeded).

    A check on the delta method, not used by the canary: it makes no linearisation, at the
    cost of n_boot passes over the users.
    """
    y, x = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if y.size < 2 or x.sum() <= 0:
        raise ValueError("bootstrap_ci: need at least 2 users and a positive denominator")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    chunk = max(1, 2_000_000 // y.size)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, y.size, size=(min(chunk, n_boot - start), y.size))
        xs = x[idx].sum(axis=1)
        ratios[start : start + len(idx)] = np.where(
            xs > 0, y[idx].sum(axis=1) / np.maximum(xs, 1), np.nan
        )
    lo, hi = np.nanquantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def design_effect(users: pl.DataFrame, metric: str = "ctr") -> dict[str, float]:
    """Variance inflation of a metric over an independent-events (binomial) model, from data.

    Returns the mean denominator per user and the ratio of the delta-method per-user variance
    to the binomial one, R (1 - R) / x_bar: what `canary.required_users` needs to size a test.
    """
    num, den, _ = METRICS[metric]
    df = _users_frame(users, need_arm=False)
    s = ratio_stats(df[num].to_numpy(), df[den].to_numpy())
    if s["status"] != "ok" or not 0 < s["value"] < 1:
        raise ValueError(f"design_effect: cannot estimate {metric} from these users")
    r, n, xbar = s["value"], s["users"], s["denominator"] / s["users"]
    per_user_var = s["se"] ** 2 * n
    return {
        "metric_value": r,
        "per_user_denominator": xbar,
        "design_effect": per_user_var / (r * (1 - r) / xbar),
    }


__all__ = [
    "ARMS",
    "COUNTS",
    "METRICS",
    "add_user_tables",
    "analyze",
    "arm_summary",
    "bootstrap_ci",
    "design_effect",
    "lift_stats",
    "ratio_stats",
    "srm_check",
    "user_table",
]
