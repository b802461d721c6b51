"""Index building (`crops index`): FAISS part without Ray (fast), the whole build on Ray (slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crops.index.build import IndexConfig, build_faiss, build_index
from crops.index.store import VideoIndex
from crops.model.encoders import build_dual_encoder
from crops.schema import video_text

QUERIES = ["python snake care", "deep learning transformer", "power grid", "cooking pasta", "cat"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("index-model") / "model"
    build_dual_encoder("hash", seed=3).save(out)
    return out


@pytest.fixture(scope="module")
def corpus(tiny_dir: Path, model_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video ids, doc vectors, query vectors) of the tiny world, embedded in-process."""
    from crops.model.encoders import DualEncoder

    model = DualEncoder.load(model_dir)
    text = video_text(pl.read_parquet(tiny_dir / "videos.parquet"))
    docs = model.embed(text["text"].to_list(), side="doc")
    return text["video_id"].to_numpy(), docs, model.embed(QUERIES, side="query")


def assert_exact(scores, found, ids, docs, queries, k: int) -> None:
    """Top-k equals brute-force inner product (ties may order ids either way)."""
    brute = queries @ docs.T
    want = -np.sort(-brute, axis=1)[:, :k]
    np.testing.assert_allclose(scores, want, atol=1e-5)
    row_of = {int(v): i for i, v in enumerate(ids)}
    for q, row in enumerate(found):
        assert len(set(row.tolist())) == k
        got = np.array([brute[q, row_of[int(v)]] for v in row])
        np.testing.assert_allclose(got, scores[q], atol=1e-5)


def _search(index, ids: np.ndarray, queries: np.ndarray, k: int):
    scores, rows = index.search(queries, k)
    return scores, ids[rows]


def recall(found: np.ndarray, ids, docs, queries, k: int) -> float:
    truth = np.argsort(-(queries @ docs.T), axis=1)[:, :k]
    hits = [len(set(ids[t].tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits)) / k


# ------------------------------------------------------------------------- FAISS, no Ray


def test_flat_is_exact_and_keeps_row_order(corpus) -> None:
    ids, docs, queries = corpus
    index, info = build_faiss(docs, "Flat")
    assert index.ntotal == len(ids) and info["metric"] == "ip" and info["shards"] == 1
    np.testing.assert_array_equal(index.reconstruct_n(0, 5), docs[:5])
    assert_exact(*_search(index, ids, queries, 10), ids, docs, queries, 10)


def test_flat_ignores_the_shard_size(corpus) -> None:
    ids, docs, queries = corpus
    whole, _ = build_faiss(docs, "Flat")
    sharded, info = build_faiss(docs, "Flat", shard_size=400)
    assert info["shards"] == 1 and info["shard_mode"] == "whole"  # one add: a copy
    s1, r1 = whole.search(queries, 20)
    s2, r2 = sharded.search(queries, 20)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)


def test_hnsw_finds_the_true_neighbours(corpus) -> None:
    ids, docs, queries = corpus
    index, info = build_faiss(docs, "HNSW32", ef_search=128)
    assert info["ef_search"] == 128 and info["shard_mode"] == "whole"
    _, found = _search(index, ids, queries, 10)
    assert recall(found, ids, docs, queries, 10) >= 0.9


def test_ivf_trains_on_a_sample_and_probes_as_told(corpus) -> None:
    ids, docs, queries = corpus
    index, info = build_faiss(docs, "IVF16,Flat", train_size=600, nprobe=16)
    assert info["nprobe"] == 16 and info["train_size"] == 600 and index.is_trained
    assert_exact(*_search(index, ids, queries, 10), ids, docs, queries, 10)  # all lists probed
    _, info = build_faiss(docs, "IVF16,Flat")
    assert info["nprobe"] == 16  # the default, capped at nlist


def test_bad_factories_fail_clearly(corpus) -> None:
    _, docs, _ = corpus
    with pytest.raises(ValueError, match="invalid FAISS factory 'NoSuch12'.*could not parse"):
        build_faiss(docs, "NoSuch12")
    with pytest.raises(ValueError, match="multiple of the number of subquantizers"):
        build_faiss(docs, "IVF16,PQ7")
    with pytest.raises(ValueError, match=r"'IVF4096,Flat' trains 4096 centroids.*has 100.*'IVF2"):
        build_faiss(docs[:100], "IVF4096,Flat")
    with pytest.raises(ValueError, match="drop IDMap"):
        IndexConfig(model_dir="m", videos=["v"], out="o", factory="IDMap,Flat")


def test_store_applies_search_settings_from_the_manifest(corpus, tmp_path: Path) -> None:
    from crops.index.store import write_index

    ids, docs, _ = corpus
    index, info = build_faiss(docs, "HNSW16", ef_search=40)
    write_index(tmp_path / "ix", index, ids, info)
    loaded = VideoIndex.load(tmp_path / "ix")
    import faiss

    assert faiss.downcast_index(loaded.index).hnsw.efSearch == 40
    again = VideoIndex.load(tmp_path / "ix", ef_search=7)
    assert faiss.downcast_index(again.index).hnsw.efSearch == 7


# ------------------------------------------------------------- bad input, before Ray starts


def _cfg(model_dir, videos, out, **kw) -> IndexConfig:
    return IndexConfig(
        model_dir=str(model_dir), videos=[str(v) for v in videos], out=str(out), **kw
    )


def test_build_index_refuses_bad_input_naming_it(tiny_dir: Path, model_dir: Path, tmp_path):
    videos = tiny_dir / "videos.parquet"
    with pytest.raises(FileNotFoundError, match="model folder .*nowhere does not exist"):
        build_index(_cfg(tmp_path / "nowhere", [videos], tmp_path / "o"))
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(FileNotFoundError, match="not a CroPS model folder"):
        build_index(_cfg(tmp_path / "empty-model", [videos], tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="videos file .*none.parquet not found"):
        build_index(_cfg(model_dir, [tmp_path / "none.parquet"], tmp_path / "o"))
    empty = tmp_path / "empty.parquet"
    pl.read_parquet(videos).head(0).write_parquet(empty)
    with pytest.raises(ValueError, match="no valid videos to index in .*empty.parquet"):
        build_index(_cfg(model_dir, [empty], tmp_path / "o"))
    with pytest.raises(ValueError, match="invalid FAISS factory 'HNSW32x'"):
        build_index(_cfg(model_dir, [videos], tmp_path / "o", factory="HNSW32x"))
    with pytest.raises(ValueError, match="'IVF65536,Flat' trains 65536 centroids.*has 1500"):
        build_index(_cfg(model_dir, [videos], tmp_path / "o", factory="IVF65536,Flat"))
    copy = tmp_path / "copy.parquet"
    shutil.copy(videos, copy)
    with pytest.raises(ValueError, match=r"1500 video ids also in .*videos.parquet"):
        build_index(_cfg(model_dir, [videos, copy], tmp_path / "o"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and not an index folder"):
        build_index(_cfg(model_dir, [videos], tmp_path / "busy"))


def test_an_existing_index_is_kept_without_force(corpus, tiny_dir: Path, model_dir, tmp_path):
    from crops.index.store import write_index

    ids, docs, _ = corpus
    write_index(tmp_path / "ix", build_faiss(docs, "Flat")[0], ids, {"factory": "Flat"})
    with pytest.raises(ValueError, match="already holds an index: use --force"):
        build_index(_cfg(model_dir, [tiny_dir / "videos.parquet"], tmp_path / "ix"))


def test_cli_index_exits_2_on_bad_input(run, tiny_dir: Path, model_dir: Path, tmp_path) -> None:
    videos = tiny_dir / "videos.parquet"
    code, _, stderr = run("index", "--model", tmp_path / "no", "--videos", videos, "--out", "o")
    assert code == 2 and "does not exist" in stderr
    code, _, stderr = run(
        "index", "--model", model_dir, "--videos", videos, "--out", "o", "--factory", "IVF4096,PQ32"
    )
    assert code == 2 and "'IVF4096,PQ32' trains 4096 centroids" in stderr
    code, _, stderr = run(
        "index", "--model", model_dir, "--videos", videos, "--out", "o", "--actors", 0
    )
    assert code == 2 and "bad option actors" in stderr


# ------------------------------------------------------------------- the whole build, on Ray


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (build_index starts it once); shut down afterwards."""
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def built(ray_session, tiny_dir: Path, model_dir: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("built") / "index"
    return build_index(_cfg(model_dir, [tiny_dir / "videos.parquet"], out, batch_size=128))


@pytest.mark.slow
def test_build_index_writes_an_exact_flat_index(built: dict, corpus, model_dir: Path) -> None:
    ids, docs, queries = corpus
    index = VideoIndex.load(built["path"])
    np.testing.assert_array_equal(index.ids, ids)  # file order, whatever Ray's order
    assert_exact(*index.search(queries, 10), ids, docs, queries, 10)
    m = json.loads((Path(built["path"]) / "manifest.json").read_text())
    assert m["count"] == len(ids) and m["dim"] == 128 and m["factory"] == "Flat"
    assert m["metric"] == "ip" and m["normalized"] is True and m["encoder"] == "hash"
    assert m["model_dir"] == str(model_dir) and m["shards"] == 1 and "nprobe" not in m
    assert m["videos"][0]["rows"] == len(ids) and m["videos"][0]["path"].endswith("videos.parquet")
    assert m["embed_s"] > 0 and m["build_s"] >= 0 and m["created_at"]
    index.check_model(model_dir)


@pytest.mark.slow
def test_another_model_is_refused(built: dict, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_dual_encoder("hash", seed=4).save(other)
    with pytest.raises(ValueError, match="hashes differently: rebuild the index"):
        VideoIndex.load(built["path"]).check_model(other)


@pytest.mark.slow
def test_ivf_shards_built_in_ray_tasks_match_one_process(ray_session, corpus) -> None:
    ids, docs, queries = corpus
    whole, _ = build_faiss(docs, "IVF16,Flat", nprobe=4, seed=5)
    sharded, info = build_faiss(docs, "IVF16,Flat", nprobe=4, seed=5, shard_size=500)
    assert info["shard_mode"] == "tasks" and info["shards"] == 3 and sharded.ntotal == len(ids)
    s1, r1 = whole.search(queries, 10)
    s2, r2 = sharded.search(queries, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    import faiss

    faiss.extract_index_ivf(sharded).make_direct_map()
    for row in (7, 700, len(ids) - 1):  # row i is still vector i, whichever shard held it
        np.testing.assert_array_equal(sharded.reconstruct(row), docs[row])


@pytest.mark.slow
def test_cli_index_builds_hnsw(run, ray_session, tiny_dir: Path, model_dir: Path, tmp_path, corpus):
    ids, docs, queries = corpus
    out = tmp_path / "hnsw"
    args = ["index", "--model", model_dir, "--videos", tiny_dir / "videos.parquet", "--out", out]
    code, stdout, stderr = run(*args, "--factory", "HNSW32")
    assert code == 0, stderr
    assert "index written to" in stdout and "HNSW32" in stdout and "1500" in stdout
    index = VideoIndex.load(out)
    assert index.manifest["ef_search"] == 64
    assert recall(index.search(queries, 10)[1], ids, docs, queries, 10) >= 0.9
    code, _, stderr = run(*args)
    assert code == 2 and "already holds an index" in stderr
    code, stdout, _ = run(*args, "--force")  # replaced: now Flat
    assert code == 0 and VideoIndex.load(out).manifest["factory"] == "Flat"


@pytest.mark.slow
def test_rayjob_entry_point_builds_from_two_files(
    ray_session, tiny_dir: Path, model_dir: Path, tmp_path: Path, corpus
) -> None:
    ids, docs, queries = corpus
    extra = tmp_path / "synth_videos.parquet"
    videos = pl.read_parquet(tiny_dir / "videos.parquet")
    videos.head(40).with_columns(pl.col("video_id") + (1 << 62)).write_parquet(extra)
    from crops.ray_jobs.build_index import main

    out = tmp_path / "ivf"
    code = main(
        [
            "--model",
            str(model_dir),
            "--videos",
            str(tiny_dir / "videos.parquet"),
            "--videos",
            str(extra),
            "--out",
            str(out),
            "--factory",
            "IVF16,Flat",
            "--shard-size",
            "600",
            "--nprobe",
            "16",
        ]
    )
    assert code == 0
    index = VideoIndex.load(out)
    assert len(index) == len(ids) + 40 and index.manifest["shards"] == 3
    assert index.manifest["nprobe"] == 16 and [v["rows"] for v in index.manifest["videos"]] == [
        len(ids),
        40,
    ]
    np.testing.assert_array_equal(index.ids[: len(ids)], ids)
    all_docs = np.concatenate([docs, docs[:40]])
    assert_exact(*index.search(queries, 5), index.ids, all_docs, queries, 5)
    assert main(["--model", str(tmp_path / "none"), "--videos", str(extra), "--out", "x"]) == 2
