"""mine: the knowledge backend, an LLM endpoint from the environment, a bad backend refused."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp.dsl import Dataset, Metrics
from support.kfp_artifacts import given, out

from crops.components.mine import mine


def test_mine_grades_samples_with_the_knowledge_backend(tiny_dir: Path, tmp_path: Path) -> None:
    mined, metrics = out(Dataset, tmp_path, "mined"), out(Metrics, tmp_path, "m")
    backend = mine.python_func(
        world=given(Dataset, tiny_dir),
        mined=mined,
        metrics=metrics,
        filter_model="none",
        llm_backend="knowledge",  # a named diagnostic, never a default
    )
    assert backend == "knowledge (simulator world knowledge, not an LLM)"
    for name in ("samples.parquet", "synth_videos.parquet", "report.json"):
        assert (Path(mined.path) / name).is_file()
    m = metrics.metadata
    assert m["samples"] == pq.read_metadata(Path(mined.path) / "samples.parquet").num_rows
    assert m["source_llm"] == m["synthetic_videos"] > 0 and m["synthesis_is_llm"] == 0
    assert m["quarantined_videos"] == 0 and "label_5" in m


def test_mine_takes_the_llm_endpoint_and_key_from_the_environment(
    tiny_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """What the crops-llm Secret sets on a cluster: CROPS_LLM_ENDPOINT and CROPS_LLM_API_KEY."""
    from fakes.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("CROPS_LLM_ENDPOINT", fake.url)
        monkeypatch.setenv("CROPS_LLM_API_KEY", "sk-from-secret")
        metrics = out(Metrics, tmp_path, "m")
        backend = mine.python_func(
            world=given(Dataset, tiny_dir),
            mined=out(Dataset, tmp_path, "mined"),
            metrics=metrics,
            llm_model="fake-llm",
            filter_model="none",
            synth_max_queries=3,
            synth_per_query=2,
        )
    assert backend == "openai-chat (an LLM)"
    assert len(fake.requests) == 3 and fake.requests[0]["model"] == "fake-llm"
    assert {h["authorization"] for h in fake.headers} == {"Bearer sk-from-secret"}
    assert metrics.metadata["synthesis_is_llm"] == 1 and metrics.metadata["synthetic_videos"] > 0


def test_mine_refuses_an_unknown_backend(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llm_backend 'gpt': use one of"):
        mine.python_func(
            world=given(Dataset, tiny_dir),
            mined=out(Dataset, tmp_path, "mined"),
            metrics=out(Metrics, tmp_path, "m"),
            llm_backend="gpt",
        )
