"""`crops mine` end to end on a tiny simulated world: files, labels, report, quality, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from fakes.fake_openai import FakeOpenAIServer

from crops.mining.config import MineConfig
from crops.mining.mine import mine
from crops.mining.relevance import RelevanceFilter
from crops.mining.synthesis.knowledge import KnowledgeBackend
from crops.schema import SAMPLES, VIDEOS, load_table


@pytest.fixture(scope="session")
def minilm() -> RelevanceFilter:
    """The real all-MiniLM-L6-v2 filter, loaded once per session (embeddings cached)."""
    return RelevanceFilter("minilm")


@pytest.fixture(scope="session")
def mined(tiny_dir: Path, tiny_world, minilm, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mined")
    report = mine(tiny_dir, out, MineConfig(), KnowledgeBackend(tiny_world), scorer=minilm)
    return out, report


def test_writes_the_three_files_in_their_contracts(mined) -> None:
    out, report = mined
    assert pq.read_schema(out / "samples.parquet").equals(SAMPLES)
    assert pq.read_schema(out / "synth_videos.parquet").equals(VIDEOS)
    assert json.loads((out / "report.json").read_text()) == json.loads(
        json.dumps(report, default=str)
    )


def test_every_hla_label_and_source_is_produced(mined) -> None:
    out, report = mined
    samples = pl.read_parquet(out / "samples.parquet")
    assert set(samples["label"].unique()) == {1, 2, 3, 4, 5}
    assert set(samples["source"].unique()) == {
        "reformulation",
        "recfeed",
        "llm",
        "click",
        "exposed",
        "ranked",
        "prefiltered",
    }
    assert sum(report["samples"]["by_source"].values()) == samples.height
    assert samples.select(["query", "video_id"]).is_duplicated().sum() == 0
    filtered = samples.filter(pl.col("source").is_in(["reformulation", "recfeed"]))
    assert (filtered["relevance"] > MineConfig().relevance_threshold).all()
    assert samples.filter(pl.col("source") == "click")["relevance"].is_null().all()


LEVELS = ["exposed", "ranked", "prefiltered"]


def test_level_samples_carry_the_filter_score_and_nothing_is_dropped_by_default(mined) -> None:
    out, report = mined
    samples = pl.read_parquet(out / "samples.parquet")
    levels = samples.filter(pl.col("source").is_in(LEVELS))
    assert levels.height > 0 and levels["relevance"].is_not_null().all()
    assert levels["relevance"].is_between(0, 1).all()
    lf = report["level_filter"]
    assert lf["threshold"] is None and MineConfig().level_filter is None
    assert lf["scored"] == lf["kept"] == levels.height and lf["dropped"] == 0


def test_level_filter_drops_level_samples_at_or_below_it_and_counts_them(
    mined, tiny_dir: Path, tiny_world, minilm, tmp_path
) -> None:
    out, _ = mined
    base = pl.read_parquet(out / "samples.parquet")
    levels = base.filter(pl.col("source").is_in(LEVELS))
    threshold = round(float(levels["relevance"].median()), 3)
    cfg = MineConfig(level_filter=threshold)
    report = mine(tiny_dir, tmp_path, cfg, KnowledgeBackend(tiny_world), scorer=minilm)
    samples = pl.read_parquet(tmp_path / "samples.parquet")
    gated = samples.filter(pl.col("source").is_in(LEVELS))
    assert (gated["relevance"] > threshold).all()
    expected = levels.filter(pl.col("relevance") <= threshold)
    lf = report["level_filter"]
    assert lf["threshold"] == threshold
    assert lf["dropped"] == expected.height > 0
    assert lf["dropped_by_source"] == dict(expected.group_by("source").len().sort("source").rows())
    assert lf["kept"] == gated.height == levels.height - expected.height
    # everything else is the same: the filter gates labels 1-3 only
    others = pl.col("source").is_in(LEVELS).not_()
    assert samples.filter(others).equals(base.filter(others))
    assert report["samples"]["rows"] == base.height - expected.height


def test_level_filter_needs_the_filter_model(tiny_dir: Path, tiny_world, tmp_path) -> None:
    cfg = MineConfig(filter_model="none", level_filter=0.6)
    with pytest.raises(ValueError, match="level_filter 0.6 needs the relevance filter"):
        mine(tiny_dir, tmp_path, cfg, KnowledgeBackend(tiny_world), scorer=None)


def test_samples_refer_to_real_or_synthetic_videos(mined, tiny_dir: Path) -> None:
    out, _ = mined
    videos = pl.read_parquet(tiny_dir / "videos.parquet")["video_id"]
    synth = pl.read_parquet(out / "synth_videos.parquet")
    assert synth["synthetic"].all() and synth["source_query"].is_not_null().all()
    ids = pl.concat([videos, synth["video_id"]])
    _, quarantine, report = load_table(out / "samples.parquet", "samples", video_ids=ids)
    assert quarantine.height == 0, quarantine["reason"].unique().to_list()
    llm = pl.read_parquet(out / "samples.parquet").filter(pl.col("source") == "llm")
    assert set(llm["video_id"]) == set(synth["video_id"])
    assert (
        llm.join(synth, left_on=["video_id", "query"], right_on=["video_id", "source_query"]).height
        == llm.height
    )


def test_report_counts_filter_synthesis_and_quality(mined) -> None:
    _, report = mined
    for source in ("reformulation", "recfeed"):
        f = report["filter"][source]
        assert 0 < f["passed"] <= f["candidates"]
        assert report["samples"]["by_source"][source] <= f["passed"]
    syn = report["synthesis"]
    assert syn["is_llm"] is False and "not an LLM" in syn["backend"]
    assert syn["videos"] == report["samples"]["by_source"]["llm"]
    assert syn["policy"]["selected"] > 0
    q = report["quality"]
    for source in ("reformulation", "recfeed"):
        assert q[source]["precision"] >= 0.8, (source, q[source])
        assert q[source]["never_shown_share"] > 0.0
    assert q["llm"]["precision"] >= 0.9
    assert report["quarantined"] == {"videos": 0, "search_log": 0, "rec_log": 0, "llm": 0}


def test_mining_is_deterministic(mined, tiny_dir: Path, tiny_world, minilm, tmp_path) -> None:
    out, _ = mined
    mine(tiny_dir, tmp_path, MineConfig(), KnowledgeBackend(tiny_world), scorer=minilm)
    for name in ("samples.parquet", "synth_videos.parquet"):
        first = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == first, name


def test_bad_rows_are_quarantined_and_counted_not_fatal(
    tiny_dir: Path, tiny_world, tmp_path
) -> None:
    world = Path(shutil.copytree(tiny_dir, tmp_path / "w"))
    log = pl.read_parquet(world / "search_log.parquet")
    log = log.with_columns(
        pl.when(pl.int_range(pl.len()) == 5)
        .then(-7)
        .otherwise(pl.col("watch_ms"))
        .alias("watch_ms"),
        pl.when(pl.int_range(pl.len()) == 9)
        .then(pl.lit("nowhere"))
        .otherwise(pl.col("stage"))
        .alias("stage"),
    )
    log.write_parquet(world / "search_log.parquet")
    cfg = MineConfig(filter_model="none")
    report = mine(world, tmp_path / "m", cfg, KnowledgeBackend(tiny_world), scorer=None)
    assert report["quarantined"]["search_log"] == 2
    assert report["inputs"]["search_log"]["reasons"] == {"negative watch_ms": 1, "unknown stage": 1}
    q = pl.read_parquet(tmp_path / "m/_quarantine/search_log.parquet")
    assert sorted(q["row"].to_list()) == [5, 9]
    assert (tmp_path / "m/samples.parquet").exists()


def test_cli_mine_with_the_knowledge_backend(run, tiny_dir: Path, tmp_path) -> None:
    code, stdout, stderr = run(
        "mine",
        "--world",
        tiny_dir,
        "--out",
        tmp_path / "M",
        "--llm-backend",
        "knowledge",
        "--filter-model",
        "none",
    )
    assert code == 0, stderr
    assert "samples written" in stdout and "not an LLM" in stdout
    report = json.loads((tmp_path / "M/report.json").read_text())
    assert set(report["samples"]["by_label"]) == {"1", "2", "3", "4", "5"}
    # options left out keep MineConfig's defaults, their one home
    defaults = MineConfig().model_dump()
    for key in (
        "relevance_threshold",
        "level_filter",
        "reformulation_window_s",
        "feed_window_s",
        "feed_max_per_user",
    ):
        assert report["config"][key] == defaults[key], key
    assert "level filter" in stdout and "off" in stdout


def test_cli_mine_says_plainly_when_synthesis_was_off(run, tiny_dir: Path, tmp_path) -> None:
    code, stdout, stderr = run(
        "mine", "--world", tiny_dir, "--out", tmp_path / "M", "--llm-backend", "none",
        "--filter-model", "none",
    )  # fmt: skip
    assert code == 0, stderr
    line = next(ln for ln in stdout.splitlines() if ln.startswith("synthesis:"))
    assert line.startswith("synthesis: off (--llm-backend none): no synthetic videos (")
    assert "not an LLM" not in line and "0 videos for" not in line
    report = json.loads((tmp_path / "M/report.json").read_text())
    assert report["synthesis"]["backend"] == "none" and report["synthesis"]["videos"] == 0


def test_cli_mine_summary_counts_what_the_level_filter_dropped() -> None:
    from crops.cli.mine import _level_filter_summary

    assert _level_filter_summary({"threshold": None}) == {"level filter": "off"}
    lines = _level_filter_summary(
        {
            "threshold": 0.6,
            "dropped": 5,
            "dropped_by_source": {"exposed": 1, "ranked": 4},
            "kept": 20,
        }
    )
    assert lines == {
        "level filter > 0.6: dropped": 5,
        "  dropped exposed": 1,
        "  dropped ranked": 4,
        "  level samples kept": 20,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm-endpoint", "http://127.0.0.1:9"], "needs --llm-model"),
        (
            ["--llm-endpoint", "http://127.0.0.1:9", "--llm-model", "m", "--llm-backend", "none"],
            "not both",
        ),
        (["--llm-endpoint", "ftp://x", "--llm-model", "m"], "ftp://x"),
        (["--relevance-threshold", "1.5"], "relevance_threshold"),
        (["--level-filter", "1.5"], "level_filter"),
        (["--level-filter", "0.6", "--filter-model", "none"], "--level-filter needs"),
        (["--feed-max-per-user", "0"], "feed_max_per_user"),
        (["--window-s", "0"], "reformulation_window_s"),
        (["--filter-model", "/no/such/model"], "/no/such/model"),
        (["--llm-backend", "vllm-offline"], "needs --llm-model"),
        (["--llm-backend", "vllm-offline", "--llm-model", "m"], "crops[vllm]"),
    ],
)
def test_cli_mine_rejects_bad_options(run, tiny_dir: Path, tmp_path, args, message) -> None:
    code, _, stderr = run("mine", "--world", tiny_dir, "--out", tmp_path / "M", *args)
    assert code == 2
    assert message in stderr


def test_cli_mine_needs_a_world(run, tmp_path) -> None:
    code, _, stderr = run("mine", "--world", tmp_path, "--out", tmp_path / "M")
    assert code == 2 and "videos.parquet" in stderr


def test_cli_knowledge_backend_needs_a_simulated_world(run, tiny_dir: Path, tmp_path) -> None:
    world = tmp_path / "real"
    world.mkdir()
    for name in ("videos.parquet", "search_log.parquet", "rec_log.parquet"):
        shutil.copy(tiny_dir / name, world / name)
    code, _, stderr = run(
        "mine", "--world", world, "--out", tmp_path / "M", "--llm-backend", "knowledge"
    )
    assert code == 2 and "knowledge backend" in stderr
    code, _, stderr = run(
        "mine",
        "--world",
        world,
        "--out",
        tmp_path / "M",
        "--llm-backend",
        "none",
        "--filter-model",
        "none",
    )
    assert code == 0, stderr
    report = json.loads((tmp_path / "M/report.json").read_text())
    assert "no ground truth" in report["quality"]["note"]
    assert report["samples"]["by_source"].get("llm", 0) == 0


def test_cli_mine_through_an_openai_compatible_server(run, tiny_dir: Path, tmp_path) -> None:
    """Synthesis over HTTP against the FAKE server; a rerun is served from the cache."""
    args = [
        "mine",
        "--world",
        tiny_dir,
        "--out",
        tmp_path / "M",
        "--filter-model",
        "none",
        "--synth-max-queries",
        "12",
        "--synth-per-query",
        "1",
    ]
    with FakeOpenAIServer() as fake:
        code, _, stderr = run(*args, "--llm-endpoint", fake.url, "--llm-model", fake.model)
        assert code == 0, stderr
        first = json.loads((tmp_path / "M/report.json").read_text())["synthesis"]
        sent = sum(fake.calls.values())
        code, _, stderr = run(*args, "--llm-endpoint", fake.url, "--llm-model", fake.model)
        assert code == 0, stderr
        again = json.loads((tmp_path / "M/report.json").read_text())["synthesis"]
        assert sum(fake.calls.values()) == sent  # nothing sent twice
    assert first["is_llm"] is True and first["model"] == "fake-llm"
    assert first["requests_sent"] == 12 and first["videos"] == 12
    assert again["requests_sent"] == 0 and again["cache_hits"] == 12


@pytest.mark.slow
def test_default_world_positives_are_precise_and_beyond_exposure(minilm, tmp_path) -> None:
    """The issue's quality bar: reformulation and recfeed precision >= 0.8, most never shown."""
    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate
    from crops.world.world import World

    simulate(WorldConfig.for_scale("default", seed=1), tmp_path / "w")
    world = World.load(tmp_path / "w")
    report = mine(
        tmp_path / "w", tmp_path / "m", MineConfig(), KnowledgeBackend(world), scorer=minilm
    )
    q = report["quality"]
    for source in ("reformulation", "recfeed"):
        assert q[source]["precision"] >= 0.8, (source, q[source])
        assert q[source]["never_shown_share"] > 0.5, (source, q[source])


def test_rayjob_entry_point_mines_like_the_cli(tiny_dir: Path, tmp_path: Path) -> None:
    """`python -m crops.ray_jobs.mine` is `crops mine`: same outputs, exit 2 on bad input."""
    from crops.ray_jobs.mine import main

    out = tmp_path / "mined"
    args = ["--world", str(tiny_dir), "--out", str(out), "--filter-model", "none"]
    assert main([*args, "--llm-backend", "knowledge"]) == 0
    assert (out / "samples.parquet").is_file() and (out / "synth_videos.parquet").is_file()
    assert main(["--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_cli_mine_synthesises_with_the_real_local_llm_by_default(run, tiny_dir: Path, tmp_path):
    """No backend named: llama.cpp's server with the packaged model, started and stopped by
    mine; the report names the model and counts what it made and what it quarantined."""
    from crops.mining.llm_server import MODEL_NAME, LocalServer

    code, stdout, stderr = run(
        "mine",
        "--world",
        tiny_dir,
        "--out",
        tmp_path / "M",
        "--filter-model",
        "none",
        "--synth-max-queries",
        "3",
        "--synth-per-query",
        "1",
    )
    assert code == 0, stderr
    assert "local-llm (an LLM)" in stdout
    syn = json.loads((tmp_path / "M/report.json").read_text())["synthesis"]
    assert syn["backend"] == "local-llm" and syn["is_llm"] and syn["model"] == MODEL_NAME
    assert syn["requests_sent"] >= 3 and syn["succeeded"] + syn["failed"] == 3
    assert syn["videos"] >= 1
    assert not LocalServer.load(tmp_path / "M" / "llm_server.json").alive()
