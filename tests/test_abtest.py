"""The online A/B job: assignment, a run through real HTTP endpoints, report, robustness, CLI."""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from fake_kserve import FakeKServeEndpoint

from crops.evaluate.abtest import (
    AbTestConfig,
    AbTestError,
    apply_decision,
    assign,
    assignment_hash,
    run_abtest,
)
from crops.evaluate.canary import CanaryPolicy
from crops.schema import SEARCH_LOG
from crops.world.world import World

# A policy the tiny world can reach: 300 users, and latency on a shared 2-core machine is noise.
TINY_POLICY = {"min_users_per_arm": 30, "max_p99_ms": 60_000, "max_p99_increase_ms": 60_000}


@pytest.fixture(scope="module")
def endpoints(tiny_world: World) -> Iterator[tuple[str, str]]:
    """Two well-behaved fake endpoints (control, treatment) for the fast tests."""
    with FakeKServeEndpoint(tiny_world) as a, FakeKServeEndpoint(tiny_world) as b:
        yield a.url, b.url


def _cfg(world: Path, control: str, treatment: str, out: Path, **kw) -> AbTestConfig:
    values = dict(treatment_share=0.5, users=150, days=2, policy=TINY_POLICY, timeout_s=5.0) | kw
    return AbTestConfig(world=world, control=control, treatment=treatment, out=out, **values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_timings(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "timings"}


# --------------------------------------------------------------------------- assignment


def test_assignment_is_stable_salted_and_close_to_the_share() -> None:
    ids = np.arange(1, 20_001)
    first = assign(ids, 0.1, "s1")
    assert np.array_equal(first, assign(ids, 0.1, "s1"))  # stable across calls
    assert abs(first.mean() - 0.1) < 0.01  # binomial sd 0.002
    assert not np.array_equal(first, assign(ids, 0.1, "s2"))  # the salt reshuffles
    assert np.all(assign(ids, 0.2, "s1")[first])  # widening the share keeps treated users
    assert assignment_hash(42, "s1") == assignment_hash(42, "s1")
    assert 0.0 <= assignment_hash(42, "s1") < 1.0


def test_config_plans_one_look_per_day_and_refuses_bad_values(tmp_path: Path) -> None:
    cfg = AbTestConfig(
        world=tmp_path,
        control="http://x",
        treatment="http://y",
        out=tmp_path,
        days=3,
        policy=CanaryPolicy(looks=5),
    )
    assert cfg.policy.looks == 3
    for bad in (
        {"treatment_share": 0.0},
        {"treatment_share": 1.0},
        {"users": 1},
        {"days": 0},
        {"surprise": 1},
    ):
        with pytest.raises(ValueError):
            AbTestConfig(
                world=tmp_path, control="http://x", treatment="http://y", out=tmp_path, **bad
            )


# --------------------------------------------------------------------------- runs


def test_a_run_writes_logs_report_and_plots_and_reruns_identically(
    tiny_dir: Path, tiny_world: World, endpoints, tmp_path: Path
) -> None:
    control, treatment = endpoints
    out = tmp_path / "R"
    first = run_abtest(_cfg(tiny_dir, control, treatment, out))
    saved = json.loads((out / "ab_report.json").read_text())
    assert _without_timings(saved) == _without_timings(first)

    # assignment: users split by the hash, every logged user in the arm the hash says
    assigned = first["assignment"]["assigned"]
    assert assigned["control"] + assigned["treatment"] == 150
    for arm in ("control", "treatment"):
        for look in range(1, first["looks_run"] + 1):
            day = out / "logs" / arm / f"day={look}"
            log = pl.read_parquet(day / "search_log.parquet")
            assert pq.read_schema(day / "search_log.parquet").equals(SEARCH_LOG)
            requests = pl.read_parquet(day / "requests.parquet")
            assert set(log["request_id"].unique()) <= set(requests["request_id"])
            in_treatment = assign(requests["user_id"].unique().to_numpy(), 0.5, "crops-abtest")
            assert in_treatment.all() if arm == "treatment" else not in_treatment.any()

    # per-look history, cumulative: users never decrease; endpoint counts add up
    hist = first["history"]
    assert [h["look"] for h in hist] == list(range(1, len(hist) + 1))
    assert all(h["metrics"]["ctr"]["control"]["value"] is not None for h in hist)
    for a, b in zip(hist, hist[1:], strict=False):
        assert b["users"]["control"] >= a["users"]["control"]
    for arm in ("control", "treatment"):
        g = first["guardrails"][arm]
        assert g["errors"] == 0 and g["requests"] > 0
        assert g["requests"] == sum(h["guardrails_this_day"][arm]["requests"] for h in hist)
    assert first["decision"]["action"] in ("promote", "hold", "rollback")
    assert first["decision"]["reasons"]

    md = (out / "report.md").read_text()
    assert f"**Decision: {first['decision']['action'].upper()}**" in md
    for m in ("ctr", "long_play_rate", "reformulation_rate"):
        assert f"| {m} |" in md
    assert "Guardrails" in md and "Sample ratio" in md
    for png in ("metrics_over_time.png", "lift_over_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun with the same seed and inputs: the same report but for wall-clock figures
    logs_before = pl.read_parquet(out / "logs/treatment/day=1/search_log.parquet")
    again = run_abtest(_cfg(tiny_dir, control, treatment, out))
    assert _without_timings(again) == _without_timings(first)
    assert pl.read_parquet(out / "logs/treatment/day=1/search_log.parquet").equals(logs_before)
    other = run_abtest(_cfg(tiny_dir, control, treatment, tmp_path / "R2", seed=1, days=1))
    assert other["history"][0]["metrics"] != first["history"][0]["metrics"]


def test_a_flaky_treatment_is_rolled_back_by_the_guardrail(
    tiny_dir: Path, tiny_world: World, tmp_path: Path
) -> None:
    flaky = FakeKServeEndpoint(tiny_world, fail_share=0.2, slow_share=0.1, slow_s=2.0)
    with FakeKServeEndpoint(tiny_world) as good, flaky:
        report = run_abtest(
            _cfg(tiny_dir, good.url, flaky.url, tmp_path / "R", timeout_s=1.0, concurrency=16)
        )
    g = report["guardrails"]
    assert g["control"]["errors"] == 0
    trt = g["treatment"]
    assert trt["errors"] > 0 and 0.15 < trt["error_rate"] < 0.5  # 500s and timeouts alike
    assert report["decision"]["action"] == "rollback"
    assert any("error rate" in r for r in report["decision"]["reasons"])
    assert report["looks_run"] == 1 and report["stopped_early"]  # sequential: stops at once
    assert (tmp_path / "R" / "report.md").is_file()


def test_an_unreachable_url_fails_before_any_traffic(
    tiny_dir: Path, endpoints, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(AbTestError, match="not reachable"):
        run_abtest(_cfg(tiny_dir, endpoints[0], dead, tmp_path / "R"))
    assert not (tmp_path / "R" / "logs").exists()


def test_arms_that_are_neither_url_nor_model_are_refused(
    tiny_dir: Path, endpoints, tmp_path: Path
) -> None:
    with pytest.raises(AbTestError, match="neither an http"):
        run_abtest(_cfg(tiny_dir, endpoints[0], str(tmp_path / "nope"), tmp_path / "R"))
    with pytest.raises(AbTestError, match="not a CroPS model folder"):
        run_abtest(_cfg(tiny_dir, str(tiny_dir), endpoints[1], tmp_path / "R"))
    with pytest.raises(AbTestError, match="not a simulated world"):
        run_abtest(_cfg(tmp_path, endpoints[0], endpoints[1], tmp_path / "R"))


def test_an_unknown_decision_is_refused_before_any_api_call() -> None:
    """(promote / rollback / hold against a real API server: tests/test_k8s_inference_service.py)"""
    with pytest.raises(ValueError, match="unknown decision"):
        apply_decision({"action": "panic"}, isvc="crops", namespace="ns")


# --------------------------------------------------------------------------- real servers


@pytest.mark.slow
def test_two_model_folders_are_served_and_compared(
    tiny_dir: Path, tiny_index, tmp_path: Path
) -> None:
    from crops.model.encoders import build_dual_encoder

    model_dir, index_dir = tiny_index
    other = tmp_path / "other-model"
    build_dual_encoder("hash", seed=7).save(other)
    out = tmp_path / "R"
    cfg = _cfg(tiny_dir, str(model_dir), str(other), out, control_index=index_dir, days=2)
    report = run_abtest(cfg)
    assert report["arms"]["control"]["index"] == str(index_dir)
    assert (out / "indexes" / "treatment" / "manifest.json").is_file()  # built, exact
    for arm in ("control", "treatment"):
        assert report["guardrails"][arm]["errors"] == 0
        assert report["guardrails"][arm]["requests"] > 0
        log = (out / "logs" / arm / "server.log").read_text()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", log).group(1))
        with socket.socket() as s:  # the job stopped its servers
            assert s.connect_ex(("127.0.0.1", port)) != 0
    again = run_abtest(cfg)
    assert _without_timings(again) == _without_timings(report)


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--treatment-share", "0"], "treatment_share"),
        (["--treatment-share", "1.5"], "treatment_share"),
        (["--users", "1"], "users"),
        (["--days", "0"], "days"),
        (["--apply"], "--apply needs --isvc"),
        (["--isvc", "x"], "go with --apply"),
    ],
)
def test_cli_refuses_bad_options(run, tiny_dir: Path, endpoints, tmp_path, args, message) -> None:
    code, _, stderr = run(
        "abtest",
        "--world",
        tiny_dir,
        "--control",
        endpoints[0],
        "--treatment",
        endpoints[1],
        "--out",
        tmp_path / "R",
        *args,
    )
    assert code == 2 and message in stderr


def test_cli_refuses_bad_arms_and_worlds(run, tiny_dir: Path, endpoints, tmp_path) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    base = ["abtest", "--out", tmp_path / "R"]
    code, _, err = run(*base, "--world", tiny_dir, "--control", endpoints[0], "--treatment", dead)
    assert code == 2 and "not reachable" in err and dead in err
    code, _, err = run(
        *base, "--world", tiny_dir, "--control", tmp_path / "x", "--treatment", endpoints[1]
    )
    assert code == 2 and "neither an http(s) URL nor an existing model folder" in err
    code, _, err = run(
        *base, "--world", tmp_path, "--control", endpoints[0], "--treatment", endpoints[1]
    )
    assert code == 2 and "not a simulated world" in err
    assert not (tmp_path / "R" / "logs").exists()


def test_cli_prints_the_decision_and_a_summary(run, tiny_dir: Path, endpoints, tmp_path) -> None:
    code, stdout, stderr = run(
        "abtest",
        "--world",
        tiny_dir,
        "--control",
        endpoints[0],
        "--treatment",
        endpoints[1],
        "--treatment-share",
        "0.5",
        "--days",
        "1",
        "--min-users-per-arm",
        "50",
        "--max-p99-ms",
        "60000",
        "--out",
        tmp_path / "R",
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "R" / "ab_report.json").read_text())
    assert report["decision"]["action"].upper() in stdout
    assert "ctr lift" in stdout and "treatment error rate" in stdout


@pytest.mark.e2e
def test_cli_abtest_on_two_trained_models(run, mined_fast, tmp_path: Path) -> None:
    """The issue's "done when": two models trained by `crops train`, compared online."""
    import ray

    out_dir, world = mined_fast
    models = []
    try:
        for seed in (0, 1):
            md = tmp_path / f"MD{seed}"
            code, _, stderr = run(
                "train",
                "--samples",
                out_dir / "samples.parquet",
                "--videos",
                world / "videos.parquet",
                "--out",
                md,
                "--workers",
                "1",
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "3",
                "--seed",
                seed,
            )
            assert code == 0, stderr
            models.append(md)
    finally:
        ray.shutdown()
    code, stdout, stderr = run(
        "abtest",
        "--world",
        world,
        "--control",
        models[0],
        "--treatment",
        models[1],
        "--treatment-share",
        "0.5",
        "--days",
        "2",
        "--min-users-per-arm",
        "50",
        "--max-p99-ms",
        "60000",
        "--out",
        tmp_path / "R",
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "R" / "ab_report.json").read_text())
    assert re.search(r"(PROMOTE|HOLD|ROLLBACK) after look", stdout)
    assert report["arms"]["treatment"]["source"] == "model"
    assert all(report["guardrails"][a]["errors"] == 0 for a in ("control", "treatment"))
    for name in ("report.md", "metrics_over_time.png", "lift_over_time.png"):
        assert (tmp_path / "R" / name).is_file()
    shutil.rmtree(tmp_path / "R" / "indexes")
