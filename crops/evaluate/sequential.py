"""The canary decision: promote, hold or roll back a treatment under a declared policy.

A canary is looked at repeatedly (one look per simulated day in the A/B runner). Testing at the
full alpha at every look inflates the false-promotion rate (about 0.07 instead of 0.025 for a
two-sided 0.05 test over 5 looks; tests/evaluate/test_sequential.py measures it), so each look gets
a nominal level from a Lan-DeMets alpha-spending function, with exact group-sequential boundaries:

    O'Brien-Fleming type:  alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))
    Pocock type:           alpha(t) = alpha ln(1 + (e - 1) t)

where t is the information fraction. The z statistics of successive looks are jointly normal
with corr(Z_i, Z_j) = sqrt(t_i / t_j); boundary c_k solves
P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = alpha(t_k) - alpha(t_{k-1}). Exact
boundaries rather than the union bound (spending each increment as an independent test) because
the union bound wastes power with correlated looks (Pocock most of all), and power is what sizes
the test. The probabilities come from the recursive numerical integration of Armitage,
McPherson and Rowe (a deterministic 1-D integral per look, milliseconds); tests cross-check them
against scipy.stats.multivariate_normal and against simulated Brownian paths.

The test is two-sided at alpha: crossing the upper boundary in the good direction promotes,
crossing in the bad direction rolls back, so the false-promotion rate under no effect is at most
alpha / 2 (and the false-harm rate of each metric as much).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import optimize, stats

from crops.evaluate.abstats import METRICS

Spending = Literal["obrien-fleming", "pocock"]
MetricName = Literal["ctr", "long_play_rate", "reformulation_rate"]


class CanaryPolicy(BaseModel):
    """What a treatment must show to be promoted, declared before the test starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    primary: MetricName = Field("ctr", description="the metric whose improvement promotes")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="two-sided overall level over all looks")
    looks: int = Field(5, ge=1, le=50, description="planned sequential looks (one per day)")
    spending: Spending = Field("obrien-fleming", description="Lan-DeMets spending function")
    min_users_per_arm: int = Field(
        500, ge=2, description="no promotion before both arms have this many users"
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="treatment endpoint errors + timeouts / requests"
    )
    max_p99_ms: float = Field(200.0, gt=0, description="treatment endpoint p99 latency")
    max_error_rate_increase: float = Field(
        0.005, ge=0, description="allowed treatment - control error rate (absolute)"
    )
    max_p99_increase_ms: float = Field(
        100.0, ge=0, description="allowed treatment - control p99 latency"
    )
    srm_p: float = Field(
        0.001, gt=0, lt=1, description="sample-ratio mismatch when the chi-square p is below"
    )

    @property
    def secondary(self) -> tuple[str, ...]:
        """The metrics that must show no significant harm: every metric but the primary."""
        return tuple(m for m in METRICS if m != self.primary)


# --------------------------------------------------------------------------- group-sequential


def spent_alpha(t: float, alpha: float, spending: Spending) -> float:
    """Cumulative two-sided alpha spent by information fraction t (0 at t=0, alpha at t=1)."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    if spending == "obrien-fleming":
        return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(t)))
    if spending == "pocock":
        return float(alpha * math.log1p((math.e - 1) * t))
    raise ValueError(f"unknown spending function {spending!r}")


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w / 3.0


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in fractions)
    if (
        not ts
        or any(not 0 < t <= 1 for t in ts)
        or any(b <= a for a, b in zip(ts, ts[1:], strict=False))
    ):
        raise ValueError(f"information fractions must increase within (0, 1], got {list(ts)}")
    return ts


class _Walk:
    """The sub-density of B(t) = Z sqrt(t) on paths that have not crossed yet, look by look."""

    def __init__(self, drift: float = 0.0) -> None:
        self.drift = drift
        self.x = np.zeros(1)
        self.mass = np.ones(1)  # integration weight x density on the grid (a point mass at 0)
        self.t = 0.0

    def _exit(self, t: float, b: float) -> tuple[float, float]:
        s = math.sqrt(t - self.t)
        mu = self.x + self.drift * (t - self.t)
        upper = float(self.mass @ stats.norm.sf((b - mu) / s))
        lower = float(self.mass @ stats.norm.cdf((-b - mu) / s))
        return upper, lower

    def step(self, t: float, c: float, n: int) -> tuple[float, float]:
        """Advance to fraction t with |Z| boundary c; return (upper, lower) crossing mass."""
        b = c * math.sqrt(t)
        upper, lower = self._exit(t, b)
        s, centre = math.sqrt(t - self.t), self.drift * t
        lo, hi = max(-b, centre - 9 * math.sqrt(t)), min(b, centre + 9 * math.sqrt(t))
        if hi <= lo:  # everything has crossed
            self.x, self.mass = np.zeros(1), np.zeros(1)
        else:
            y = np.linspace(lo, hi, n)
            mu = self.x + self.drift * (t - self.t)
            dens = stats.norm.pdf((y[:, None] - mu[None, :]) / s) @ self.mass / s
            self.x, self.mass = y, dens * _simpson(n) * (y[1] - y[0])
        self.t = t
        return upper, lower


def _grid(ts: tuple[float, ...]) -> int:
    step = min(b - a for a, b in zip((0.0, *ts), ts, strict=False))
    n = int(min(1601, max(201, 20 * 9 / math.sqrt(step))))
    return n | 1


@lru_cache(maxsize=256)
def boundaries(fractions: tuple[float, ...], alpha: float, spending: Spending) -> tuple[float, ...]:
    """Two-sided |Z| boundaries c_1..c_k at the given information fractions (inf: no stop)."""
    ts = _check_fractions(fractions)
    walk, n, out, spent = _Walk(), _grid(ts), [], 0.0
    for t in ts:
        target = spent_alpha(t, alpha, spending) - spent
        if target <= 1e-14:
            c = math.inf
        else:

            def excess(c: float, t: float = t, target: float = target) -> float:
                return sum(walk._exit(t, c * math.sqrt(t))) - target

            c = optimize.brentq(excess, 1e-6, 40.0, xtol=1e-10)
        up, lo = walk.step(t, min(c, 40.0), n)
        spent += up + lo
        out.append(c)
    return tuple(out)


def crossing_probabilities(
    bounds: Sequence[float], fractions: Sequence[float], drift: float = 0.0
) -> tuple[list[float], list[float]]:
    """P(first crossing at look k) above and below, for Z_k ~ N(drift sqrt(t_k), 1) paths."""
    ts = _check_fractions(fractions)
    walk, n = _Walk(drift), _grid(ts)
    upper, lower = [], []
    for t, c in zip(ts, bounds, strict=True):
        u, lo = walk.step(t, min(c, 40.0), n)
        upper.append(u)
        lower.append(lo)
    return upper, lower


def look_fractions(
    look: int,
    policy: CanaryPolicy,
    information_fraction: float | None = None,
    history: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Information fractions of looks 1..look.

    Without `information_fraction` the looks are the planned ones, t_j = j / looks. With it, the
    earlier looks are `history`, or else assumed equally spaced up to the current fraction; a
    fraction at or over 1 before the final look (more traffic than planned) is capped at 0.999.
    The final planned look always uses t = 1, so the whole alpha is available there.
    """
    if not 1 <= look <= policy.looks:
        raise ValueError(f"look {look} is outside the planned looks 1..{policy.looks}")
    if information_fraction is None:
        observed = look / policy.looks
    else:
        observed = min(0.999, float(information_fraction))  # more data than planned: cap
    current = 1.0 if look == policy.looks else observed
    if history is not None:
        if len(history) != look - 1:
            raise ValueError(f"history must hold {look - 1} earlier fractions, got {len(history)}")
        earlier = [float(t) for t in history]
    elif information_fraction is None:
        earlier = [j / policy.looks for j in range(1, look)]
    else:
        earlier = [observed * j / look for j in range(1, look)]
    return _check_fractions([*earlier, current])


def nominal_level(
    look: int,
    policy: CanaryPolicy,
    information_fraction: float | None = None,
    history: Sequence[float] | None = None,
) -> tuple[float, float, float]:
    """(nominal two-sided alpha, |Z| boundary, information fraction) of this look."""
    ts = look_fractions(look, policy, information_fraction, history)
    c = boundaries(ts, policy.alpha, policy.spending)[-1]
    return (0.0 if math.isinf(c) else float(2 * stats.norm.sf(c))), c, ts[-1]


# --------------------------------------------------------------------------- decision


class Decision(BaseModel):
    """The canary's verdict at one look, with every reason as a sentence."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["promote", "hold", "rollback"]
    reasons: list[str]
    look: int
    looks: int
    information_fraction: float
    nominal_alpha: float
    boundary_z: float | None

    @model_validator(mode="after")
    def _has_reason(self) -> Decision:
        if not self.reasons:
            raise ValueError("a decision needs at least one reason")
        return self


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:+.2f} %" if signed else f"{x * 100:.2f} %"


def _p(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.2g}" if x < 0.001 else f"{x:.4f}")


def _describe(name: str, m: dict[str, Any]) -> str:
    return (
        f"{name} {m['treatment']:.4f} vs {m['control']:.4f} "
        f"(lift {_pct(m['lift'])}, CI [{_pct(m['lift_ci_low'])}, {_pct(m['lift_ci_high'])}], "
        f"p = {_p(m['p_value'])})"
    )


def _guardrail_reasons(guardrails: dict[str, dict], policy: CanaryPolicy) -> tuple[list, list]:
    """(rollback reasons, hold reasons) from the endpoints' counts and latencies."""
    rollback: list[str] = []
    hold: list[str] = []
    trt, ctl = guardrails.get("treatment"), guardrails.get("control")

    def rate(g: dict) -> float | None:
        req, err = g.get("requests"), g.get("errors")
        if req:
            return (err or 0) / req
        return g.get("error_rate")

    if not trt or not trt.get("requests"):
        hold.append(
            "no guardrail data for the treatment arm (no requests recorded): "
            "cannot promote without error-rate and latency figures"
        )
        return rollback, hold
    er = rate(trt)
    if er is not None and er > policy.max_error_rate:
        rollback.append(
            f"treatment error rate {_pct(er, False)} ({trt.get('errors', 0):,} of "
            f"{trt['requests']:,} requests failed or timed out) exceeds the limit "
            f"{_pct(policy.max_error_rate, False)}"
        )
    p99 = trt.get("p99_ms")
    if p99 is not None and p99 > policy.max_p99_ms:
        rollback.append(
            f"treatment p99 latency {p99:.1f} ms exceeds the limit {policy.max_p99_ms:.1f} ms"
        )
    if ctl and ctl.get("requests"):
        cr = rate(ctl)
        if er is not None and cr is not None and er - cr > policy.max_error_rate_increase:
            rollback.append(
                f"treatment error rate {_pct(er, False)} exceeds control's {_pct(cr, False)} "
                f"by {(er - cr) * 100:.2f} points, more than the allowed "
                f"{policy.max_error_rate_increase * 100:.2f}"
            )
        cp = ctl.get("p99_ms")
        if p99 is not None and cp is not None and p99 - cp > policy.max_p99_increase_ms:
            rollback.append(
                f"treatment p99 latency {p99:.1f} ms exceeds control's {cp:.1f} ms by "
                f"{p99 - cp:.1f} ms, more than the allowed {policy.max_p99_increase_ms:.1f} ms"
            )
    return rollback, hold


def decide(
    analysis: dict[str, Any],
    guardrails: dict[str, dict],
    *,
    look: int,
    information_fraction: float | None = None,
    policy: CanaryPolicy,
    history: Sequence[float] | None = None,
) -> Decision:
    """Promote, hold or roll back at `look` (1-based) given `abstats.analyze` output.

    Rollback: sample-ratio mismatch (p < policy.srm_p); a treatment guardrail breach (error rate
    or p99 over the limit, or worse than control by more than the allowed margin; `guardrails`
    holds per arm requests, errors (timeouts included), error_rate, p99_ms); significant harm on
    the primary or any secondary metric at this look's nominal level. Promote: both arms have
    min_users_per_arm users and the primary improves significantly at this look's level with
    none of the above. At the final look anything else rolls back (no evidence of benefit);
    before it, hold. `information_fraction`/`history`: see `look_fractions`.
    """
    nominal, c, t = nominal_level(look, policy, information_fraction, history)
    final = look == policy.looks
    where = f"look {look} of {policy.looks} (nominal p < {_p(nominal)})"

    def verdict(action: str, reasons: list[str]) -> Decision:
        return Decision(
            action=action,
            reasons=reasons,
            look=look,
            looks=policy.looks,
            information_fraction=t,
            nominal_alpha=nominal,
            boundary_z=None if math.isinf(c) else c,
        )

    rollback: list[str] = []
    srm = analysis["srm"]
    if srm.get("p_value") is not None and srm["p_value"] < policy.srm_p:
        rollback.append(
            f"sample ratio mismatch: {srm['control_users']:,} control vs "
            f"{srm['treatment_users']:,} treatment users, treatment share "
            f"{_pct(srm['observed_treatment_share'], False)} against the planned "
            f"{_pct(srm['expected_treatment_share'], False)} (chi-square p = {_p(srm['p_value'])}"
            f" < {policy.srm_p}): the assignment or logging is broken, the metrics are not "
            "trustworthy"
        )
    g_rollback, g_hold = _guardrail_reasons(guardrails, policy)
    rollback += g_rollback
    metrics = analysis["metrics"]
    for name in (policy.primary, *policy.secondary):
        m = metrics[name]
        if m["status"] != "ok" or m["p_value"] >= nominal:
            continue
        if m["z"] * m["direction"] < 0:
            rollback.append(f"significant harm on {_describe(name, m)} at {where}")
    if rollback:
        return verdict("rollback", rollback)

    hold: list[str] = list(g_hold)
    n_arm = {a: analysis["arms"][a]["users"] for a in ("control", "treatment")}
    if min(n_arm.values()) < policy.min_users_per_arm:
        hold.append(
            f"minimum sample not met: {n_arm['control']:,} control and {n_arm['treatment']:,} "
            f"treatment users, {policy.min_users_per_arm:,} per arm required"
        )
    m = metrics[policy.primary]
    if m["status"] != "ok":
        hold.append(f"{policy.primary}: insufficient data ({m.get('reason', 'unknown')})")
    elif m["p_value"] < nominal and m["z"] * m["direction"] > 0:
        if not hold:
            return verdict(
                "promote",
                [
                    f"significant improvement on {_describe(policy.primary, m)} at {where}, "
                    "no significant harm on "
                    f"{', '.join(policy.secondary)} and guardrails within limits"
                ],
            )
        hold.append(f"{policy.primary} improves significantly but cannot promote yet")
    else:
        hold.append(f"no significant change yet on {_describe(policy.primary, m)} at {where}")
    if final:
        return verdict("rollback", ["no evidence of benefit at the final look: " + "; ".join(hold)])
    return verdict("hold", hold)


# --------------------------------------------------------------------------- sample size


@dataclass(frozen=True)
class SampleSize:
    """Users a canary needs at its final look, and the assumptions behind the number."""

    total: int
    control: int
    treatment: int
    fixed_total: int  # a single-look test at the primary power, for comparison
    effect_size: float  # Cohen's d of the per-user log-ratio linearisation
    per_user_sd: float  # sd of one user's contribution to the metric (delta method)
    primary_power: float  # power asked of the primary, so the whole decision reaches `power`
    sequential_inflation: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _drift_for_power(bounds: Sequence[float], ts: Sequence[float], power: float) -> float:
    def short(theta: float) -> float:
        return sum(crossing_probabilities(bounds, ts, theta)[0]) - power

    return float(optimize.brentq(short, 0.0, 20.0, xtol=1e-8))


def required_users(
    baseline_rate: float,
    relative_lift: float,
    *,
    per_user_denominator: float,
    power: float = 0.8,
    treatment_share: float = 0.5,
    design_effect: float = 1.0,
    policy: CanaryPolicy | None = None,
) -> SampleSize:
    """Users (both arms, at the final look) for `policy` to promote a planted lift with `power`.

    Assumptions: the metric is a rate (e.g. CTR) of `per_user_denominator` events per user on
    average over the whole test; one user's sums have variance `design_effect` times the
    binomial R (1 - R) / x_bar (1 for independent events; `abstats.design_effect` measures it
    from a pilot or an A/A run); both arms have the same relative per-user variance; the test is
    the delta-method z on the log ratio. statsmodels' NormalIndPower sizes the single-look test
    on the effect size d = |log(1 + lift)| R / sd_user; the group-sequential design (policy's
    looks, spending and alpha) multiplies it by (theta_seq / theta_fixed)^2, the drifts giving
    the same power. The power asked of the primary is raised to power / (1 - g alpha / 2), g the
    secondary metrics, so that false harm rollbacks on them (at most alpha / 2 each) do not
    take the decision's power under `power`. Looks where an arm is under min_users_per_arm
    are not counted (conservative: their alpha is spent unused).
    """
    from statsmodels.stats.power import NormalIndPower

    policy = policy or CanaryPolicy()
    if not 0 < baseline_rate < 1:
        raise ValueError(f"baseline_rate must be in (0, 1), got {baseline_rate}")
    if relative_lift == 0 or relative_lift <= -1:
        raise ValueError(f"relative_lift must be non-zero and above -1, got {relative_lift}")
    if per_user_denominator <= 0 or design_effect <= 0:
        raise ValueError("per_user_denominator and design_effect must be positive")
    if not 0 < treatment_share < 1 or not 0 < power < 1:
        raise ValueError("treatment_share and power must be in (0, 1)")
    primary_power = power / (1 - len(policy.secondary) * policy.alpha / 2)
    if primary_power >= 1:
        raise ValueError(f"power {power} is out of reach with {len(policy.secondary)} secondaries")
    sd = math.sqrt(baseline_rate * (1 - baseline_rate) / per_user_denominator * design_effect)
    d = abs(math.log1p(relative_lift)) * baseline_rate / sd
    ratio = treatment_share / (1 - treatment_share)
    n_control = NormalIndPower().solve_power(
        effect_size=d,
        nobs1=None,
        alpha=policy.alpha,
        power=primary_power,
        ratio=ratio,
        alternative="two-sided",
    )
    fixed_total = float(n_control) / (1 - treatment_share)
    ts = tuple(j / policy.looks for j in range(1, policy.looks + 1))
    seq = _drift_for_power(boundaries(ts, policy.alpha, policy.spending), ts, primary_power)
    one = _drift_for_power(boundaries((1.0,), policy.alpha, policy.spending), (1.0,), primary_power)
    inflation = (seq / one) ** 2
    total = math.ceil(fixed_total * inflation)
    return SampleSize(
        total=total,
        control=math.ceil(total * (1 - treatment_share)),
        treatment=math.ceil(total * treatment_share),
        fixed_total=math.ceil(fixed_total),
        effect_size=d,
        per_user_sd=sd,
        primary_power=primary_power,
        sequential_inflation=inflation,
    )


__all__ = [
    "CanaryPolicy",
    "Decision",
    "SampleSize",
    "boundaries",
    "crossing_probabilities",
    "decide",
    "look_fractions",
    "nominal_level",
    "required_users",
    "spent_alpha",
]
