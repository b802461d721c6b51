"""The simulated A/B job: assignment, a run through HTTP endpoints that leaves the logs
`crops abtest analyze` reads (and the same numbers when it reads them), robustness, CLI."""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from fakes.fake_kserve import FakeKServeEndpoint

from crops.abtest.analyze import AnalyzeConfig, analyze_logs
from crops.abtest.arms import AbTestError
from crops.abtest.layout import SEARCH_WITH_ARM
from crops.abtest.simulate import AbTestConfig, run_abtest
from crops.abtest.traffic import assign, assignment_hash
from crops.evaluate.sequential import CanaryPolicy
from crops.k8s.rollout import apply_decision
from crops.schema import REQUEST_LOG
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
    """The report without wall-clock figures: run times and measured latencies."""
    drop = ("p50_ms", "p99_ms")
    out = {k: v for k, v in report.items() if k not in ("timings", "guardrails")}
    out["history"] = [
        {
            **h,
            "guardrails": {
                a: {k: v for k, v in g.items() if k not in drop} for a, g in h["guardrails"].items()
            },
        }
        for h in report["history"]
    ]
    out.pop("analysis", None)
    return out


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
    assert first["source"] == "simulated"

    # the logs: the layout's partitions, every logged user in the arm the hash says
    assigned = first["assignment"]["assigned"]
    assert assigned["control"] + assigned["treatment"] == 150
    search_files = sorted((out / "logs" / "search_log").glob("day=*/part-*.parquet"))
    request_files = sorted((out / "logs" / "request_log").glob("day=*/requests-*.parquet"))
    assert len(search_files) == len(request_files) == 2 * first["looks_run"]
    for f in search_files:
        assert pq.read_schema(f).equals(SEARCH_WITH_ARM)
        log = pl.read_parquet(f)
        arm = f.stem.removeprefix("part-")
        assert set(log["arm"].unique()) <= {arm}
        in_treatment = assign(log["user_id"].unique().to_numpy(), 0.5, "crops-abtest")
        assert in_treatment.all() if arm == "treatment" else not in_treatment.any()
    requests = pl.concat([pl.read_parquet(f) for f in request_files])
    assert pq.read_schema(request_files[0]).equals(REQUEST_LOG)
    searched = pl.concat([pl.read_parquet(f) for f in search_files])
    assert set(searched["request_id"].cast(pl.String)) <= set(requests["request_id"])

    # per-look history from the ledger, cumulative: users never decrease
    hist = first["history"]
    assert [h["look"] for h in hist] == list(range(1, len(hist) + 1))
    assert all(h["metrics"]["ctr"]["control"]["value"] is not None for h in hist)
    for a, b in zip(hist, hist[1:], strict=False):
        assert b["users"]["control"] >= a["users"]["control"]
    for arm in ("control", "treatment"):
        g = first["guardrails"][arm]
        assert g["errors"] == 0 and g["requests"] > 0
    assert sum(first["guardrails"][a]["requests"] for a in ("control", "treatment")) == (
        requests.filter(pl.col("ts") < datetime.fromisoformat(hist[-1]["window_end"])).height
    )
    assert first["decision"]["action"] in ("promote", "hold", "rollback")
    assert first["decision"]["reasons"]
    assert len(json.loads(Path(first["experiment"]["ledger"]).read_text())["looks"]) == len(hist)

    md = (out / "report.md").read_text()
    assert f"**Decision: {first['decision']['action'].upper()}**" in md
    for m in ("ctr", "long_play_rate", "reformulation_rate"):
        assert f"| {m} |" in md
    assert "Guardrails" in md and "Sample ratio" in md
    for png in ("metrics_over_time.png", "lift_over_time.png", "sequential_boundary.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun with the same seed and inputs: the same report but for wall-clock figures
    logs_before = pl.read_parquet(search_files[-1])
    again = run_abtest(_cfg(tiny_dir, control, treatment, out))
    assert _without_timings(again) == _without_timings(first)
    assert pl.read_parquet(search_files[-1]).equals(logs_before)
    other = run_abtest(_cfg(tiny_dir, control, treatment, tmp_path / "R2", seed=1, days=1))
    assert other["history"][0]["metrics"] != first["history"][0]["metrics"]


def test_analyze_reads_the_simulated_logs_to_the_same_numbers_and_decision(
    tiny_dir: Path, endpoints, tmp_path: Path
) -> None:
    """Issue 13 point 5: the simulator is a log source; `analyze` of its logs agrees."""
    control, treatment = endpoints
    sim = run_abtest(_cfg(tiny_dir, control, treatment, tmp_path / "R", days=3))
    cfg = AnalyzeConfig(
        logs=str(tmp_path / "R" / "logs"),
        out=tmp_path / "R2",
        treatment_share=0.5,
        policy=sim["policy"],
    )
    again = analyze_logs(cfg)
    assert again["source"] == "logs" and again["looks_taken_now"] == list(
        range(1, sim["looks_run"] + 1)
    )
    assert again["history"] == sim["history"]  # every number, look by look, guardrails too
    assert again["analysis"] == sim["analysis"] and again["decision"] == sim["decision"]
    assert again["experiment"]["id"] == sim["experiment"]["id"]
    assert again["hygiene"]["search_log"] == sim["hygiene"]["search_log"]
    # both ledgers hold the same looks, byte for byte but for where they are
    a = json.loads(Path(sim["experiment"]["ledger"]).read_text())
    b = json.loads(Path(again["experiment"]["ledger"]).read_text())
    strip = lambda d: [{k: v for k, v in lk.items() if k != "written_at"} for lk in d["looks"]]  # noqa: E731
    assert strip(a) == strip(b)


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
    trt = g["treatment"]  # from the request log: 5xx answers and timeouts (504)
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
    """(promote / rollback / hold against a real API server:
    tests/k8s/test_k8s_inference_service.py)"""
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
        log = (out / "servers" / f"{arm}.log").read_text()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)", log).group(1))
        with socket.socket() as s:  # the job stopped its servers
            assert s.connect_ex(("127.0.0.1", port)) != 0
    again = run_abtest(cfg)
    assert _without_timings(again) == _without_timings(report)
    hashes = {report["arms"][a]["model_hash"] for a in ("control", "treatment")}
    assert {report["experiment"]["control_hash"], report["experiment"]["candidate_hash"]} == hashes


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
                "--max-steps",
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
