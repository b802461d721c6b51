"""The A/B report for people: `ab_report.json`'s markdown and plots, and the report's version.

`crops.abtest.analyze` builds the report dict (schema `REPORT_VERSION`) from the logs and the
ledger; this module only presents it: `render_markdown` (the decision, the experiment, metrics,
guardrails, SRM, data hygiene, the sequential test look by look), `plot_history` (metrics,
lifts with each look's stopping boundary, and the boundary plot) and `write_report` (all
files of one report). Every figure may be None (a metric without data, a look with no
boundary), so every formatter renders None as "n/a" instead of failing: a report that cannot
be read is worse than one with gaps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crops.abtest.layout import ARMS
from crops.evaluate.abstats import METRICS
from crops.evaluate.sequential import CanaryPolicy

REPORT_VERSION = 2
REPORT_JSON = "ab_report.json"
#: The files `write_report` writes next to REPORT_JSON, as the report's "outputs" names them.
OUTPUTS: dict[str, str] = {
    "report_md": "report.md",
    "metrics_plot": "metrics_over_time.png",
    "lift_plot": "lift_over_time.png",
    "boundary_plot": "sequential_boundary.png",
}
COLORS = {"control": "tab:blue", "treatment": "tab:orange"}


# --------------------------------------------------------------------------- formatting


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def _ci(lo: float | None, hi: float | None, fmt: Callable[[float | None], str] = _pct) -> str:
    return "n/a" if lo is None or hi is None else f"[{fmt(lo)}, {fmt(hi)}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def _fix(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _g(d: Any, *keys: Any) -> Any:
    """d[k1][k2]..., or None where a level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _primary(report: dict[str, Any]) -> tuple[str, int]:
    """(primary metric, its good direction): +1 higher is better, -1 lower is better."""
    name = _g(report, "policy", "primary") or CanaryPolicy().primary
    return name, METRICS[name][2] if name in METRICS else 1


# --------------------------------------------------------------------------- markdown


def held_report(reason: str, days: int, policy: CanaryPolicy | None = None) -> dict[str, Any]:
    """The report of a test that did not run because the deploy step held the candidate back
    (the offline gate): decision hold, no looks, no traffic; `held_by` says who held it."""
    policy = policy or CanaryPolicy()
    return {
        "report_version": REPORT_VERSION,
        "held_by": "deploy",
        "policy": policy.model_dump(mode="json"),
        "looks_planned": days,
        "looks_run": 0,
        "stopped_early": False,
        "history": [],
        "analysis": {"metrics": {}},
        "decision": {
            "action": "hold",
            "reasons": [f"no A/B test: the candidate was not deployed ({reason})"],
        },
    }


def _headline(report: dict[str, Any]) -> list[str]:
    dec = report.get("decision") or {}
    action = str(dec.get("action") or "n/a").upper()
    look = dec.get("look") or report.get("looks_run")
    planned = _int(report.get("looks_planned"))
    if report.get("history"):
        where = f"at look {look} of {planned}"
        where += " (stopped early)" if report.get("stopped_early") else ""
        where += ", test finished" if report.get("finished") else ""
    else:
        where = f"no look yet ({planned} planned)"
    lines = ["# Online A/B test", "", f"**Decision: {action}** {where}", ""]
    lines += [f"- {r}" for r in dec.get("reasons") or []]
    taken = report.get("looks_taken_now")
    if taken is not None:
        now = ", ".join(map(str, taken)) if taken else "none (nothing new to analyse)"
        lines += ["", f"Looks taken by this run: {now}."]
    if report.get("pending"):
        lines.append(f"No further look now: {report['pending']}.")
    return lines


def _experiment(report: dict[str, Any]) -> list[str]:
    exp, pol = report.get("experiment") or {}, report.get("policy") or {}

    def short(h: Any) -> str:
        return f"`{str(h)[:12]}`" if h else "n/a"

    lines = [
        "",
        "## Experiment",
        "",
        f"- id: `{exp.get('id') or 'n/a'}`; started {exp.get('started_at') or 'n/a'}",
        f"- control model {short(exp.get('control_hash'))}, "
        f"candidate model {short(exp.get('candidate_hash'))}",
        f"- policy {short(exp.get('policy_fingerprint'))}: primary {pol.get('primary', 'n/a')}, "
        f"alpha {pol.get('alpha', 'n/a')} over {pol.get('looks', 'n/a')} looks, "
        f"{pol.get('spending', 'n/a')} spending",
        f"- ledger `{exp.get('ledger') or 'n/a'}`",
        f"- logs `{report.get('logs') or 'n/a'}` (source: {report.get('source') or 'n/a'})",
    ]
    if report.get("arms"):
        lines += ["", "## Arms", "", "| arm | source | endpoint | model |", "|---" * 4 + "|"]
        for name, arm in report["arms"].items():
            where = arm.get("url") or f"model `{arm.get('model_dir')}`, index `{arm.get('index')}`"
            lines.append(
                f"| {name} | {arm.get('source')} | {where} | {short(arm.get('model_hash'))} |"
            )
    world, asg = report.get("world"), report.get("assignment")
    if world and asg:
        assigned = asg.get("assigned") or {}
        lines += [
            "",
            f"World `{world.get('dir')}` (fingerprint {short(world.get('fingerprint'))}); "
            f"{_int(asg.get('users'))} users, assigned by sha256(salt:user_id) with salt "
            f"`{asg.get('salt')}`: {_int(assigned.get('control'))} control, "
            f"{_int(assigned.get('treatment'))} treatment (planned treatment share "
            f"{_fix(asg.get('treatment_share'), 3)}, assigned "
            f"{_fix(asg.get('observed_treatment_share'), 3)}).",
        ]
    return lines


def _metrics(report: dict[str, Any]) -> list[str]:
    a = report.get("analysis") or {}
    conf = a.get("confidence")
    conf_s = "n/a" if conf is None else f"{100 * conf:.0f}%"
    lines = [
        "",
        f"## Metrics (cumulative, {conf_s} intervals, delta method on user-level sums)",
        "",
        "| metric | control | control CI | treatment | treatment CI | lift | lift CI | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, lift in (a.get("metrics") or {}).items():
        c = _g(a, "arms", "control", "metrics", m) or {}
        t = _g(a, "arms", "treatment", "metrics", m) or {}
        lines.append(
            f"| {m} | {_pct(c.get('value'))} | {_ci(c.get('ci_low'), c.get('ci_high'))} | "
            f"{_pct(t.get('value'))} | {_ci(t.get('ci_low'), t.get('ci_high'))} | "
            f"{_signed(lift.get('lift'))} | "
            f"{_ci(lift.get('lift_ci_low'), lift.get('lift_ci_high'), _signed)} | "
            f"{_p(lift.get('p_value'))} |"
        )
    history = report.get("history") or []
    nominal = _g(history[-1], "boundary", "nominal_alpha") if history else None
    lines += [
        "",
        f"Intervals and p-values are fixed-horizon at alpha {a.get('alpha', 'n/a')}; the "
        f"decision compares the primary metric with the look's sequential boundary (nominal "
        f"p < {_p(nominal)}).",
        "",
        "Active users (searched at least once): "
        + ", ".join(f"{arm} {_int(_g(a, 'arms', arm, 'users'))}" for arm in ARMS)
        + ".",
        "",
        "## Guardrails (endpoint)",
        "",
        "| arm | requests | errors | error rate | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for arm, g in (report.get("guardrails") or {}).items():
        g = g or {}
        lines.append(
            f"| {arm} | {_int(g.get('requests'))} | {_int(g.get('errors'))} | "
            f"{_pct(g.get('error_rate'))} | {_fix(g.get('p50_ms'))} | {_fix(g.get('p99_ms'))} |"
        )
    srm = a.get("srm") or {}
    verdict = " — **mismatch**" if srm.get("flagged") else " (no mismatch)"
    lines += [
        "",
        "## Sample ratio",
        "",
        f"Active users: {_int(srm.get('control_users'))} control, "
        f"{_int(srm.get('treatment_users'))} treatment; expected treatment share "
        f"{_fix(srm.get('expected_treatment_share'), 3)}, observed "
        f"{_pct(srm.get('observed_treatment_share'), 1)}; chi-square p = "
        f"{_p(srm.get('p_value'))}{verdict}.",
    ]
    return lines


def _hygiene(report: dict[str, Any]) -> list[str]:
    hyg = report.get("hygiene")
    if not hyg:
        return []
    lines = [
        "",
        "## Data hygiene",
        "",
        "| table | files | rows read | valid | quarantined |",
        "|---|---|---|---|---|",
    ]
    for table in ("search_log", "request_log"):
        t = hyg.get(table) or {}
        q = t.get("quarantined") or {}
        why = ", ".join(f"{reason} {_int(n)}" for reason, n in sorted(q.items()))
        quarantined = f"{_int(sum(q.values()))}" + (f" ({why})" if why else "")
        lines.append(
            f"| {table} | {_int(t.get('files'))} | {_int(t.get('rows'))} | "
            f"{_int(t.get('valid'))} | {quarantined} |"
        )
    late = hyg.get("late_events") or {}
    by_look = ", ".join(f"look {k}: {_int(n)}" for k, n in (late.get("looks") or {}).items())
    lines += [
        "",
        f"- Late events (rows in an earlier look's window that arrived after it was analysed, "
        f"so it did not count them): "
        f"{_int(late.get('rows'))}" + (f" ({by_look})" if by_look else "") + ".",
    ]
    early = hyg.get("before_start")  # optional: rows dated before the experiment started
    if early:
        counts = ", ".join(f"{t} {_int(n)}" for t, n in early.items())
        lines.append(f"- Rows before the experiment's start, not analysed: {counts}.")
    if hyg.get("arm_source"):
        lines.append(f"- Arm of each row from: {hyg['arm_source']}.")
    con = hyg.get("contamination") or {}
    lines.append(
        f"- Users in both arms: {_int(con.get('users_both_arms'))} of {_int(con.get('users'))} "
        f"({_pct(con.get('share'))}), analysed by {con.get('rule') or 'first assignment'}."
    )
    sk = hyg.get("clock_skew") or {}
    skew = (
        f"between search_log and request_log over {_int(sk.get('pairs'))} linked "
        f"requests: median {_fix(sk.get('median_s'), 3)} s, max |skew| "
        f"{_fix(sk.get('max_abs_s'), 3)} s (threshold {_fix(sk.get('threshold_s'), 3)} s)"
    )
    flagged = sk.get("flagged")
    lines.append(f"- **Clock skew flagged: {skew}.**" if flagged else f"- Clock skew {skew}.")
    return lines


def _sequential(report: dict[str, Any]) -> list[str]:
    history = report.get("history") or []
    if not history:
        return []
    primary, direction = _primary(report)
    lines = [
        "",
        "## Sequential test",
        "",
        f"| look | day | users (c/t) | {primary} z | boundary | nominal alpha | alpha spent "
        "| decision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in history:
        b = h.get("boundary") or {}
        c = b.get("boundary_z")
        bound = "none" if c is None else f"±{c:.3f}"
        users = f"{_int(_g(h, 'users', 'control'))}/{_int(_g(h, 'users', 'treatment'))}"
        lines.append(
            f"| {h.get('look')} | {h.get('day') or 'n/a'} | {users} | {_fix(b.get('z'), 3)} | "
            f"{bound} | {_p(b.get('nominal_alpha'))} | {_p(b.get('alpha_spent'))} | "
            f"{_g(h, 'decision', 'action') or 'n/a'} |"
        )
    good = "higher" if direction > 0 else "lower"
    promote = "z ≥ +boundary" if direction > 0 else "z ≤ −boundary"
    rollback = "z ≤ −boundary" if direction > 0 else "z ≥ +boundary"
    lines += [
        "",
        f"{primary} is better {good}: crossing the boundary in the good direction ({promote}) "
        f"promotes, crossing it in the bad direction ({rollback}) rolls back, in between holds "
        '("none": no stop is possible at that look). Secondary metrics roll back on '
        "significant harm at the same boundary.",
        "",
        "| look | day | " + " | ".join(f"{m} lift" for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for h in history:
        lifts = " | ".join(
            f"{_signed(_g(h, 'metrics', m, 'lift', 'lift'))} "
            f"(p {_p(_g(h, 'metrics', m, 'lift', 'p_value'))})"
            for m in METRICS
        )
        lines.append(f"| {h.get('look')} | {h.get('day') or 'n/a'} | {lifts} |")
    lines += [
        "",
        f"Plots: `{OUTPUTS['metrics_plot']}` (each metric per arm, with intervals), "
        f"`{OUTPUTS['lift_plot']}` (lifts with intervals and the lift that would cross each "
        f"look's boundary) and `{OUTPUTS['boundary_plot']}` ({primary} z against the boundaries).",
    ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: decision, experiment, metrics, guardrails, SRM, hygiene, looks."""
    if report.get("held_by"):
        lines = ["# Online A/B test", "", "**Decision: HOLD**, no look run", ""]
        lines += [f"- {r}" for r in _g(report, "decision", "reasons") or []]
        return "\n".join([*lines, ""])
    lines = _headline(report) + _experiment(report) + _metrics(report)
    lines += _hygiene(report) + _sequential(report)
    return "\n".join([*lines, ""])


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _arr(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def boundary_lifts(
    history: list[dict[str, Any]], metric: str
) -> list[tuple[float | None, float | None]]:
    """Per look, (lower, upper) lift at which `metric` would cross that look's boundary.

    The test is on z = log ratio / log_se, so the boundary ±c in z is the lift expm1(±c log_se):
    the lift plot can show how far the observed lift is from stopping. (None, None) where the
    look has no boundary (no stop possible) or the metric has no standard error.
    """
    out: list[tuple[float | None, float | None]] = []
    for h in history:
        c = _g(h, "boundary", "boundary_z")
        se = _g(h, "metrics", metric, "lift", "log_se")
        if c is None or se is None:
            out.append((None, None))
        else:
            out.append((math.expm1(-c * se), math.expm1(c * se)))
    return out


def sequential_figure(report: dict[str, Any]) -> Any:
    """The primary metric's z per look against ±boundary, promote/rollback regions shaded.

    Returned (not saved) so callers and tests can read the plotted data; the caller closes it.
    """
    plt = _pyplot()
    history = report.get("history") or []
    primary, direction = _primary(report)
    looks = [h.get("look") for h in history]
    z = _arr([_g(h, "boundary", "z") for h in history])
    c = _arr([_g(h, "boundary", "boundary_z") for h in history])
    finite = [abs(v) for v in (*z, *c) if np.isfinite(v)]
    top = 1.25 * max([3.0, *finite])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    shaded: set[str] = set()
    for x, cx in zip(looks, c, strict=True):
        if not np.isfinite(cx):
            continue
        for region, lo, hi, color in (
            ("promote", cx, top, "tab:green"),
            ("rollback", -top, -cx, "tab:red"),
        ):
            if direction < 0:
                lo, hi = -hi, -lo
            label = None if region in shaded else f"{region} region"
            shaded.add(region)
            ax.fill_between([x - 0.4, x + 0.4], lo, hi, color=color, alpha=0.15, label=label)
    ax.plot(looks, c, ls="--", marker="_", ms=14, color="black", label="+boundary")
    ax.plot(looks, -c, ls="--", marker="_", ms=14, color="gray", label="−boundary")
    ax.plot(looks, z, marker="o", color="tab:purple", label=f"{primary} z")
    ax.axhline(0.0, color="black", linewidth=0.8)
    for x, zx, h in zip(looks, z, history, strict=True):
        y = zx if np.isfinite(zx) else 0.0
        action = _g(h, "decision", "action") or "n/a"
        ax.annotate(action, (x, y), textcoords="offset points", xytext=(0, 8), ha="center")
    spending = _g(report, "policy", "spending") or "n/a"
    better = "higher" if direction > 0 else "lower"
    ax.set_title(
        f"Sequential test on {primary} ({better} is better), {spending} spending", fontsize=11
    )
    ax.set(xlabel="look", ylabel=f"{primary} z (treatment vs control)", ylim=(-top, top))
    ax.set_xticks(looks, [f"{h.get('look')}\n{h.get('day') or ''}" for h in history])
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_history(report: dict[str, Any], out: Path) -> list[Path]:
    """Write the three plots under `out` and return their paths; none without a look."""
    history = report.get("history") or []
    if not history:
        return []
    plt = _pyplot()
    names, looks = list(METRICS), [h.get("look") for h in history]

    def series(*keys: str) -> tuple[np.ndarray, ...]:
        return tuple(_arr([_g(h, "metrics", *keys[:-3], k) for h in history]) for k in keys[-3:])

    written: list[Path] = []

    def save(fig: Any, key: str, *, laid_out: bool = False) -> None:
        if not laid_out:
            fig.tight_layout()
        fig.savefig(out / OUTPUTS[key], dpi=100)
        plt.close(fig)
        written.append(out / OUTPUTS[key])

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        for arm in ARMS:
            v, lo, hi = series(m, arm, "value", "ci_low", "ci_high")
            ax.plot(looks, v, marker="o", color=COLORS[arm], label=arm)
            ax.fill_between(looks, lo, hi, color=COLORS[arm], alpha=0.2)
        ax.set(title=m, xlabel="look", ylabel="rate")
        ax.set_xticks(looks)
        ax.legend()
    fig.suptitle("Metrics per arm over the looks (cumulative, with intervals)")
    save(fig, "metrics_plot")

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, m in zip(axes[0], names, strict=True):
        v, lo, hi = series(m, "lift", "lift", "lift_ci_low", "lift_ci_high")
        ax.plot(looks, 100 * v, marker="o", color="tab:green", label="lift")
        ax.fill_between(looks, 100 * lo, 100 * hi, color="tab:green", alpha=0.2)
        bounds = boundary_lifts(history, m)
        for i, label in ((0, None), (1, "stopping boundary")):
            b = 100 * _arr([pair[i] for pair in bounds])
            ax.plot(looks, b, ls="--", marker="_", ms=12, color="tab:red", label=label)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set(title=f"{m} lift", xlabel="look", ylabel="treatment vs control (%)")
        ax.set_xticks(looks)
        ax.legend(fontsize=8)
    fig.suptitle("Relative lift over the looks (intervals; dashed: lift crossing the boundary)")
    save(fig, "lift_plot")

    save(sequential_figure(report), "boundary_plot", laid_out=True)
    return written


def write_report(report: dict[str, Any], out: Path, *, plots: bool = True) -> None:
    """Write ab_report.json, report.md and (unless `plots` is False) the plots under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / OUTPUTS["report_md"]).write_text(render_markdown(report), encoding="utf-8")
    if plots:
        plot_history(report, out)


__all__ = [
    "OUTPUTS",
    "REPORT_JSON",
    "REPORT_VERSION",
    "boundary_lifts",
    "held_report",
    "plot_history",
    "render_markdown",
    "sequential_figure",
    "write_report",
]
