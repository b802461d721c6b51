"""`crops train --qrels DIR`: training on human judgements, from an import (crops ingest
query-title) or a `--trec-dir` folder converted with the same judged rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crops.ingest.formats import IngestOptions
from crops.ingest.formats import run as ingest
from crops.ingest.judgements import training_tables
from crops.ingest.text import IngestError
from crops.model.data import GroupBatcher, load_training_data
from crops.model.train_config import TrainConfig
from crops.schema import JUDGED_SOURCE

FIXTURE = Path(__file__).resolve().parents[1] / "ingest" / "fixtures" / "query_title.jsonl"

TOPICS = {
    "红烧肉": ["红烧肉的家常做法", "红烧肉怎么做才好吃", "东坡肉的历史", "红烧牛肉面"],
    "天气": ["北京今日天气预报", "北京明天下雨吗", "上海天气预报", "天气预报怎么看"],
    "游泳": ["成人学游泳的方法", "蛙泳入门教学", "游泳馆开放时间", "游泳衣推荐"],
    "猫咪": ["猫咪呕吐的原因", "猫咪吐黄水怎么办", "猫粮推荐", "狗狗呕吐怎么办"],
}


def trec_dir(root: Path, extra_qrels: str = "") -> Path:
    """A tiny TREC folder: 16 docs, 8 queries graded 0..2 (2 per topic), plus `extra_qrels`."""
    root.mkdir(parents=True, exist_ok=True)
    docs, queries, qrels = [], [], []
    for t, (topic, titles) in enumerate(TOPICS.items()):
        for d, title in enumerate(titles):
            docs.append(f"D{t}{d}\t{title}")
        for k, q in enumerate((f"{topic}怎么样", f"{topic}相关")):
            qid = f"Q{t}{k}"
            queries.append(f"{qid}\t{q}")
            qrels += [
                f"{qid} 0 D{t}0 2",
                f"{qid} 0 D{t}1 2",
                f"{qid} 0 D{t}2 1",
                f"{qid} 0 D{t}3 0",
            ]
    (root / "docs.tsv").write_text("\n".join(docs) + "\n", encoding="utf-8")
    (root / "queries.tsv").write_text("\n".join(queries) + "\n", encoding="utf-8")
    (root / "test.qrels").write_text("\n".join(qrels) + "\n" + extra_qrels, encoding="utf-8")
    return root


def test_a_trec_folder_becomes_judged_samples(tmp_path: Path) -> None:
    folder = trec_dir(tmp_path / "trec", "Q00 0 D01 -1\nQX 0 D00 2\nQ10 0 NO-DOC 1\n")
    side = tmp_path / "MD-qrels"
    samples, videos, manifest = training_tables(folder, side)
    assert (samples, videos) == (side / "samples.parquet", side / "videos.parquet")
    s = pl.read_parquet(samples)
    assert set(s["source"].to_list()) == {JUDGED_SOURCE}
    # 8 queries x 4 judgements; Q00's D01 is now -1 (unreadable), Q10 judges a doc not in docs
    assert s.height == 31
    assert s.group_by("label").len().sort("label").rows() == [(1, 8), (3, 8), (5, 15)]
    assert manifest["unreadable"]["reasons"] == {
        "negative grade": 1,
        "query id not in queries": 1,
    }
    assert manifest["tables"]["samples"]["reasons"] == {"video_id not in videos": 1}
    assert manifest["notes"]["grade_scale"] == "0-2"
    assert pl.read_parquet(videos).height == 16
    # a rerun on unchanged files reuses the conversion (checkpoints stay resumable) ...
    before = samples.stat().st_mtime_ns
    training_tables(folder, side)
    assert samples.stat().st_mtime_ns == before
    # ... and a changed qrels file is converted again
    qrels = folder / "test.qrels"
    qrels.write_text(qrels.read_text().replace("Q00 0 D01 -1\n", ""), encoding="utf-8")
    _, _, manifest = training_tables(folder, side)
    assert pl.read_parquet(samples).height == 32 and "negative grade" not in json.dumps(manifest)


def test_an_import_trains_on_its_own_tables_never_on_its_held_out_collection(
    tmp_path: Path,
) -> None:
    out = tmp_path / "imported"
    ingest("query-title", FIXTURE, out, IngestOptions(grades="0-2", holdout=0.5))
    samples, videos, manifest = training_tables(out, tmp_path / "unused")
    assert (samples, videos) == (out / "samples.parquet", out / "videos.parquet")
    assert manifest["format"] == "query-title"
    assert not (tmp_path / "unused").exists()
    with pytest.raises(IngestError, match="held-out collection"):
        training_tables(out / "collection", tmp_path / "side")


def test_an_import_without_samples_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ingest.json").write_text(json.dumps({"format": "trec-session"}))
    with pytest.raises(IngestError, match="without samples.parquet"):
        training_tables(tmp_path, tmp_path / "side")


def test_judged_samples_batch_and_train_with_both_losses(tmp_path: Path) -> None:
    """Labels 1/3/5 reach the batches; H-InfoNCE ranks all three levels, binary InfoNCE at
    --positive-min-label 3 takes grade 1 (label 3) as a positive and at 4 does not."""
    import torch

    from crops.model.losses import HInfoNCELoss, InfoNCELoss

    samples, videos, _ = training_tables(trec_dir(tmp_path / "trec"), tmp_path / "side")
    data = load_training_data(samples, [videos])
    assert {int(x) for _, lab in data.groups for x in lab} == {1, 3, 5}
    batch = next(GroupBatcher(data, queries_per_batch=4, group_size=4, seed=0).epoch(0))
    labels = torch.as_tensor(batch.labels)
    assert set(np.unique(batch.labels).tolist()) >= {0, 1, 3, 5}
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(len(batch.queries), 16, generator=gen), dim=1)
    d = torch.nn.functional.normalize(torch.randn(len(batch.docs), 16, generator=gen), dim=1)
    h = HInfoNCELoss()(q, d, labels)
    at3 = InfoNCELoss(positive_min_label=3)(q, d, labels)
    at4 = InfoNCELoss(positive_min_label=4)(q, d, labels)
    assert torch.isfinite(h) and torch.isfinite(at3) and torch.isfinite(at4)
    assert not torch.isclose(at3, at4)  # label 3 (grade 1) counts at 3 only


def _fake_train(captured: dict):
    def fake(cfg: TrainConfig, progress=None) -> dict:
        captured["cfg"] = cfg
        return {
            "metrics": {"loss": 1.0, "samples_per_s": 1.0},
            "steps": 1,
            "wall_s": 0.0,
            "validation": {"why_stopped": "max_steps"},
            "samples_without_video": 0,
        }

    return fake


def test_cli_train_qrels_trains_on_the_converted_tables(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crops.model.train

    captured: dict = {}
    monkeypatch.setattr(crops.model.train, "train", _fake_train(captured))
    folder = trec_dir(tmp_path / "trec")
    args = ["--loss", "infonce", "--positive-min-label", 3]
    code, stdout, stderr = run("train", "--qrels", folder, "--out", tmp_path / "MD", *args)
    assert code == 0, stderr
    cfg = captured["cfg"]
    side = tmp_path / "MD-qrels"
    assert cfg.samples == str(side / "samples.parquet")
    assert cfg.videos == [str(side / "videos.parquet")]
    assert (cfg.loss, cfg.positive_min_label) == ("infonce", 3)
    assert "32 samples" in stdout and "grades 0-2" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "s.parquet"], "give --qrels or --samples/--videos, not both"),
        (["--videos", "v.parquet"], "give --qrels or --samples/--videos, not both"),
    ],
)
def test_cli_train_qrels_excludes_samples_and_videos(run, tmp_path: Path, args, message) -> None:
    folder = trec_dir(tmp_path / "trec")
    code, _, stderr = run("train", "--qrels", folder, "--out", tmp_path / "MD", *args)
    assert code == 2 and message in stderr
    assert not (tmp_path / "MD-qrels").exists()


def test_cli_train_qrels_names_a_bad_folder(run, tmp_path: Path) -> None:
    code, _, stderr = run("train", "--qrels", tmp_path / "none", "--out", tmp_path / "MD")
    assert code == 2 and "none" in stderr and "not a folder" in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = run("train", "--qrels", tmp_path / "empty", "--out", tmp_path / "MD")
    assert code == 2 and "expected exactly one docs file" in stderr


@pytest.fixture
def ray_local():
    import ray

    yield
    ray.shutdown()


@pytest.mark.slow
def test_cli_train_qrels_writes_a_loadable_model(run, tmp_path: Path, ray_local) -> None:
    """For real, through Ray Train: a TREC folder with H-InfoNCE, an import with binary
    InfoNCE at --positive-min-label 3; the hash encoder, a few steps each."""
    from crops.model.encoders import DualEncoder

    imported = tmp_path / "imported"
    ingest("query-title", FIXTURE, imported, IngestOptions(grades="0-2", holdout=0.0))
    fast = ["--group-size", 2, "--queries-per-batch", 2, "--steps-per-epoch", 2]
    fast += ["--max-steps", 2, "--patience", 0]
    for src, md, loss in (
        (trec_dir(tmp_path / "trec"), tmp_path / "MD1", ["--loss", "h-infonce"]),
        (imported, tmp_path / "MD2", ["--loss", "infonce", "--positive-min-label", 3]),
    ):
        code, stdout, stderr = run("train", "--qrels", src, "--out", md, *loss, *fast)
        assert code == 0, stderr
        assert "model written" in stdout
        model = DualEncoder.load(md)
        assert model.embed(["红烧肉"], side="query").shape == (1, model.dim)
        training = json.loads((md / "training.json").read_text())
        assert training["metrics"]["global_step"] == 2
        assert training["config"]["loss"] == loss[1]
