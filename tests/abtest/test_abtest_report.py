"""The A/B report for people: markdown, the three plots and write_report, on hand-built reports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from crops.abtest.report import (
    OUTPUTS,
    REPORT_VERSION,
    boundary_lifts,
    held_report,
    plot_history,
    render_markdown,
    sequential_figure,
    write_report,
)
from crops.evaluate.abstats import METRICS
from crops.evaluate.sequential import CanaryPolicy

PNGS = ("metrics_over_time.png", "lift_over_time.png", "sequential_boundary.png")
# O'Brien-Fleming boundaries of 5 equally spaced looks at alpha 0.05 (rounded).
OBF = (4.877, 3.357, 2.680, 2.290, 2.031)


def _arm(value: float | None, users: int) -> dict[str, Any]:
    lo = None if value is None else value - 0.01
    hi = None if value is None else value + 0.01
    status = "ok" if value is not None else "insufficient data"
    return {"value": value, "ci_low": lo, "ci_high": hi, "users": users, "status": status}


def _lift(lift: float | None, log_se: float | None, z: float | None) -> dict[str, Any]:
    none = lift is None
    return {
        "lift": lift,
        "lift_ci_low": None if none else lift - 0.02,
        "lift_ci_high": None if none else lift + 0.02,
        "p_value": None if z is None else 0.01,
        "status": "insufficient data" if none else "ok",
        "z": z,
        "log_se": log_se,
    }


def _look(
    k: int,
    *,
    z: float | None,
    boundary: float | None,
    action: str,
    log_se: float | None = 0.02,
    lift: float | None = 0.03,
    users: tuple[int, int] = (1000, 1010),
) -> dict[str, Any]:
    metrics = {
        m: {
            "control": _arm(0.10, users[0]),
            "treatment": _arm(None if lift is None else 0.10 * (1 + lift), users[1]),
            "lift": _lift(lift, log_se, z),
        }
        for m in METRICS
    }
    return {
        "look": k,
        "day": f"2026-01-0{k + 4}",
        "window_start": "2026-01-05T00:00:00+00:00",
        "window_end": f"2026-01-0{k + 5}T00:00:00+00:00",
        "users": {"control": users[0], "treatment": users[1]},
        "metrics": metrics,
        "srm": {},
        "guardrails": {},
        "boundary": {
            "information_fraction": k / 5,
            "nominal_alpha": None if boundary is None else 2e-5 * k,
            "boundary_z": boundary,
            "alpha_spent": 1e-3 * k,
            "z": z,
        },
        "decision": {"action": action, "reasons": [f"look {k} says {action}"]},
        "late_events": {"search_log": k, "request_log": 0},
    }


def _analysis(last: dict[str, Any], srm_flagged: bool = False) -> dict[str, Any]:
    m = last["metrics"]
    return {
        "alpha": 0.05,
        "confidence": 0.95,
        "arms": {
            arm: {"users": last["users"][arm], "metrics": {k: v[arm] for k, v in m.items()}}
            for arm in ("control", "treatment")
        },
        "metrics": {k: v["lift"] for k, v in m.items()},
        "srm": {
            "control_users": last["users"]["control"],
            "treatment_users": last["users"]["treatment"],
            "expected_treatment_share": 0.5,
            "observed_treatment_share": 0.5025,
            "chi2": 0.05,
            "p_value": 0.8231,
            "threshold": 0.001,
            "flagged": srm_flagged,
        },
    }


def _report(history: list[dict[str, Any]], *, primary: str = "ctr", **extra: Any) -> dict:
    last = history[-1]
    decision = {**last["decision"], "look": last["look"]}
    report = {
        "report_version": REPORT_VERSION,
        "source": "logs",
        "logs": "s3://bucket/ab/logs",
        "experiment": {
            "id": "exp-1",
            "control_hash": "a" * 40,
            "candidate_hash": "b" * 40,
            "started_at": "2026-01-05T00:00:00+00:00",
            "policy_fingerprint": "f" * 64,
            "ledger": "/artifacts/ledger/aaaa-bbbb.json",
        },
        "policy": CanaryPolicy(primary=primary).model_dump(mode="json"),
        "looks_planned": 5,
        "looks_run": len(history),
        "stopped_early": decision["action"] != "hold",
        "finished": decision["action"] != "hold",
        "looks_taken_now": [last["look"]],
        "pending": None,
        "history": history,
        "analysis": _analysis(last),
        "guardrails": {
            "control": {
                "requests": 5000,
                "errors": 3,
                "error_rate": 0.0006,
                "p50_ms": 12.34,
                "p99_ms": 80.0,
            },
            "treatment": {
                "requests": 5100,
                "errors": 4,
                "error_rate": 0.00078,
                "p50_ms": 13.5,
                "p99_ms": 91.26,
            },
        },
        "hygiene": {
            "search_log": {
                "files": 3,
                "rows": 12000,
                "valid": 11990,
                "quarantined": {"null_user": 4, "bad_arm": 6},
            },
            "request_log": {"files": 6, "rows": 10100, "valid": 10100, "quarantined": {}},
            "late_events": {"rows": 7, "looks": {"1": 2, "2": 5}},
            "contamination": {
                "users_both_arms": 12,
                "users": 10000,
                "share": 0.0012,
                "rule": "first assignment",
            },
            "clock_skew": {
                "pairs": 9000,
                "median_s": 0.25,
                "max_abs_s": 1.5,
                "threshold_s": 5.0,
                "flagged": False,
            },
        },
        "decision": decision,
        "outputs": {**OUTPUTS, "ledger": "/artifacts/ledger/aaaa-bbbb.json"},
    }
    return report | extra


@pytest.fixture
def promoted() -> dict[str, Any]:
    history = [
        _look(1, z=1.1, boundary=OBF[0], action="hold"),
        _look(2, z=2.2, boundary=OBF[1], action="hold"),
        _look(3, z=3.3, boundary=OBF[2], action="promote", log_se=0.01),
    ]
    return _report(history)


def _assert_png(path: Path) -> np.ndarray:
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def _lines(fig: Any) -> dict[str, np.ndarray]:
    return {line.get_label(): line.get_xydata() for line in fig.axes[0].get_lines()}


def test_markdown_of_a_promoting_run(promoted: dict[str, Any]) -> None:
    md = render_markdown(promoted)
    assert "**Decision: PROMOTE** at look 3 of 5 (stopped early), test finished" in md
    assert "- look 3 says promote" in md
    assert "Looks taken by this run: 3." in md
    # experiment: hashes cut to 12 characters, ledger, logs
    assert "control model `aaaaaaaaaaaa`, candidate model `bbbbbbbbbbbb`" in md
    assert "a" * 13 not in md
    assert "ledger `/artifacts/ledger/aaaa-bbbb.json`" in md
    assert "logs `s3://bucket/ab/logs` (source: logs)" in md
    assert "## Arms" not in md  # only simulated runs have arms
    # metrics from the analysis, guardrails' latencies from the guardrails dict
    assert "| ctr | 10.00% | [9.00%, 11.00%] | 10.30% |" in md
    assert "| treatment | 5,100 | 4 | 0.08% | 13.5 | 91.3 |" in md
    assert "chi-square p = 0.8231 (no mismatch)" in md
    # data hygiene
    assert "| search_log | 3 | 12,000 | 11,990 | 10 (bad_arm 6, null_user 4) |" in md
    assert "| request_log | 6 | 10,100 | 10,100 | 0 |" in md
    assert "so it did not count them): 7" in md
    assert "before the experiment" not in md and "Arm of each row" not in md
    assert "(look 1: 2, look 2: 5)" in md
    assert "Users in both arms: 12 of 10,000 (0.12%), analysed by first assignment." in md
    assert (
        "- Clock skew between search_log and request_log over 9,000 linked" in md
        and "max |skew| 1.500 s (threshold 5.000 s)" in md
    )
    assert "flagged" not in md
    # the sequential test, look by look
    assert "| 1 | 2026-01-05 | 1,000/1,010 | 1.100 | ±4.877 | 2.0e-05 | 0.0010 | hold |" in md
    assert "| 3 | 2026-01-07 | 1,000/1,010 | 3.300 | ±2.680 | 6.0e-05 | 0.0030 | promote |" in md
    assert "ctr is better higher" in md and "(z ≥ +boundary) promotes" in md
    assert "(z ≤ −boundary) rolls back" in md
    assert "n/a" not in md.split("## Sequential test")[1]


def test_write_report_writes_json_markdown_and_valid_pngs(
    promoted: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "ab"
    write_report(promoted, out)
    text = (out / "ab_report.json").read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text) == promoted
    assert (out / "report.md").read_text(encoding="utf-8") == render_markdown(promoted)
    for name in PNGS:
        _assert_png(out / name)
    assert sorted(p.name for p in out.iterdir()) == sorted(["ab_report.json", "report.md", *PNGS])


def test_boundary_lifts_are_the_lifts_that_cross_the_boundary(promoted: dict) -> None:
    lifts = boundary_lifts(promoted["history"], "ctr")
    ses = (0.02, 0.02, 0.01)
    assert len(lifts) == 3
    for (lo, hi), c, se in zip(lifts, OBF, ses, strict=False):
        assert lo == pytest.approx(math.expm1(-c * se), rel=1e-12)
        assert hi == pytest.approx(math.expm1(c * se), rel=1e-12)
    assert lifts[0][1] == pytest.approx(0.1024555, abs=1e-7)  # expm1(4.877 * 0.02)
    assert lifts[0][0] < 0 < lifts[0][1] and -lifts[0][0] < lifts[0][1]  # asymmetric in lift


def test_sequential_figure_plots_z_and_boundaries(promoted: dict[str, Any]) -> None:
    fig = sequential_figure(promoted)
    try:
        lines = _lines(fig)
        assert np.allclose(lines["ctr z"], [[1, 1.1], [2, 2.2], [3, 3.3]])
        assert np.allclose(lines["+boundary"][:, 1], OBF[:3])
        assert np.allclose(lines["−boundary"][:, 1], [-c for c in OBF[:3]])
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert texts == ["hold", "hold", "promote"]
        title = fig.axes[0].get_title()
        assert "ctr" in title and "obrien-fleming" in title
        # higher is better: the promote region lies above +boundary
        regions = {c.get_label(): c for c in fig.axes[0].collections}
        ys = regions["promote region"].get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(OBF[0])
    finally:
        plt.close(fig)


def test_rollback_at_the_first_look_lower_is_better(tmp_path: Path) -> None:
    look = _look(1, z=5.2, boundary=OBF[0], action="rollback")
    report = _report([look], primary="reformulation_rate")
    report["hygiene"]["clock_skew"] |= {"max_abs_s": 42.0, "flagged": True}
    report["hygiene"] |= {"before_start": {"search_log": 3, "request_log": 0}, "arm_source": "arm"}
    report["source"] = "simulated"
    report["arms"] = {
        "control": {"source": "url", "url": "http://c:8080", "model_hash": "c" * 40},
        "treatment": {
            "source": "model",
            "model_dir": "/m/cand",
            "index": "/m/cand/index",
            "model_hash": "d" * 40,
        },
    }
    report["world"] = {"dir": "/w", "fingerprint": "e" * 64, "seed": 7}
    report["assignment"] = {
        "salt": "s1",
        "treatment_share": 0.5,
        "users": 2010,
        "assigned": {"control": 1000, "treatment": 1010},
        "observed_treatment_share": 0.50249,
    }
    md = render_markdown(report)
    assert "| control | url | http://c:8080 | `cccccccccccc` |" in md
    assert "| treatment | model | model `/m/cand`, index `/m/cand/index` | `dddddddddddd` |" in md
    assert "World `/w` (fingerprint `eeeeeeeeeeee`); 2,010 users" in md
    assert "assigned 0.502)" in md
    assert "**Decision: ROLLBACK** at look 1 of 5 (stopped early)" in md
    assert "| 1 | 2026-01-05 | 1,000/1,010 | 5.200 | ±4.877 |" in md
    assert "reformulation_rate is better lower" in md
    assert "(z ≤ −boundary) promotes" in md and "(z ≥ +boundary) rolls back" in md
    assert "- Rows before the experiment's start, not analysed: search_log 3, request_log 0." in md
    assert "- Arm of each row from: arm." in md
    assert "- **Clock skew flagged: between search_log" in md and "max |skew| 42.000 s" in md
    fig = sequential_figure(report)
    try:
        regions = {c.get_label(): c for c in fig.axes[0].collections}
        promote = regions["promote region"].get_paths()[0].vertices[:, 1]
        rollback = regions["rollback region"].get_paths()[0].vertices[:, 1]
        assert promote.max() == pytest.approx(-OBF[0])  # lower is better: promote below
        assert rollback.min() == pytest.approx(OBF[0])
        assert fig.axes[0].texts[0].get_text() == "rollback"
    finally:
        plt.close(fig)
    written = plot_history(report, tmp_path)
    assert [p.name for p in written] == list(PNGS)
    for p in written:
        _assert_png(p)


def test_none_values_render_as_na_and_plot_without_failing(tmp_path: Path) -> None:
    look = _look(1, z=None, boundary=None, action="hold", log_se=None, lift=None)
    report = _report([look])
    report["guardrails"]["treatment"]["p99_ms"] = None
    report["hygiene"]["contamination"]["share"] = None
    report["hygiene"]["clock_skew"] |= {"median_s": None, "max_abs_s": None, "pairs": 0}
    report["analysis"]["srm"]["p_value"] = None
    report["looks_taken_now"] = []
    report["pending"] = "day 2026-01-06 is not complete until 2026-01-07T00:00:00+00:00"
    md = render_markdown(report)
    assert "| 1 | 2026-01-05 | 1,000/1,010 | n/a | none | n/a | 0.0010 | hold |" in md
    assert "| ctr | 10.00% | [9.00%, 11.00%] | n/a | n/a | n/a | n/a | n/a |" in md
    assert "| treatment | 5,100 | 4 | 0.08% | 13.5 | n/a |" in md
    assert "Users in both arms: 12 of 10,000 (n/a)" in md
    assert "median n/a s, max |skew| n/a s" in md
    assert "chi-square p = n/a" in md
    assert "Looks taken by this run: none (nothing new to analyse)." in md
    assert "No further look now: day 2026-01-06 is not complete until" in md
    assert boundary_lifts(report["history"], "ctr") == [(None, None)]
    fig = sequential_figure(report)
    try:
        lines = _lines(fig)
        assert lines["ctr z"].shape == (1, 2) and np.isnan(lines["ctr z"][0, 1])
        assert np.isnan(lines["+boundary"][0, 1])
        assert not fig.axes[0].collections  # no boundary: no region to shade
    finally:
        plt.close(fig)
    write_report(report, tmp_path)
    for name in PNGS:
        _assert_png(tmp_path / name)


def test_missing_sections_do_not_crash() -> None:
    md = render_markdown({"decision": {"action": "hold", "reasons": []}, "history": []})
    assert "**Decision: HOLD** no look yet (n/a planned)" in md
    assert "## Sequential test" not in md and "## Data hygiene" not in md


def test_held_report(tmp_path: Path) -> None:
    report = held_report("offline gate failed", 5, CanaryPolicy(looks=5))
    assert report["report_version"] == REPORT_VERSION == 2
    assert report["held_by"] == "deploy" and report["history"] == []
    assert report["decision"]["action"] == "hold"
    md = render_markdown(report)
    assert md.startswith("# Online A/B test\n\n**Decision: HOLD**, no look run\n")
    assert "- no A/B test: the candidate was not deployed (offline gate failed)" in md
    assert plot_history(report, tmp_path) == []
    write_report(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ab_report.json", "report.md"]
    assert json.loads((tmp_path / "ab_report.json").read_text())["held_by"] == "deploy"
