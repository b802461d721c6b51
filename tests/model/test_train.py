"""Training: DDP all-gather gradients, a 2-worker Ray Train run, and recovery from a dead worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crops.model.collective import gather, global_labels, pad_rows, sync_loss_grads
from crops.model.convergence import StopRule
from crops.model.encoders import DualEncoder, HashTower
from crops.model.losses import HInfoNCELoss
from crops.model.train import FAULT_ENV, STATE_FILE, newest
from crops.model.train_config import TrainConfig


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path: Path) -> None:
    """Ray Train hands a run restored by name its last checkpoint even when the settings
    changed (the experiment's rows keep their names); only this configuration's count."""
    from ray.train import Checkpoint

    def checkpoint(name: str, step: int, fingerprint: str) -> Checkpoint:
        d = tmp_path / name
        d.mkdir()
        (d / STATE_FILE).write_text(json.dumps({"global_step": step, "fingerprint": fingerprint}))
        return Checkpoint.from_directory(d)

    old, mine, other = checkpoint("a", 6, "old"), checkpoint("b", 4, "new"), checkpoint("c", 9, "x")
    assert newest(old, None, fingerprint="new") is None
    assert newest(old, mine, other, fingerprint="new") is mine
    assert newest(old, mine, other) is other  # no fingerprint: the most steps
    (tmp_path / "b" / STATE_FILE).write_text("{broken")
    assert newest(mine, fingerprint="new") is None  # an incomplete checkpoint is not resumed


def _batch(training_data):
    from crops.model.data import GroupBatcher

    return next(GroupBatcher(training_data, queries_per_batch=6, group_size=4, seed=2).epoch(0))


def _model() -> DualEncoder:
    return DualEncoder(HashTower(dim=16, buckets=512, hidden=16, seed=7))


def _worker(rank: int, world: int, port: int, batch, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    loss_fn = HInfoNCELoss()
    shards = [batch.shard(r, world) for r in range(world)]
    q_pad = max(len(s.queries) for s in shards)
    d_pad = max(len(s.docs) for s in shards)
    q, d = model(shards[rank].queries, shards[rank].docs)
    q_all = gather(pad_rows(q, q_pad), rank, world)
    d_all = gather(pad_rows(d, d_pad), rank, world)
    labels = torch.as_tensor(global_labels(batch, world, q_pad, d_pad))
    loss = loss_fn(q_all, d_all, labels) * world
    loss.backward()
    sync_loss_grads(loss_fn, world)
    if rank == 0:
        grads = {
            n: p.grad.numpy() for n, p in model.module.named_parameters() if p.grad is not None
        }
        grads["loss_temperature"] = next(loss_fn.parameters()).grad.numpy()
        np.savez(out, loss=loss.item() / world, **grads)
    dist.destroy_process_group()


def test_ddp_all_gather_gives_the_full_batch_gradient(training_data, tmp_path: Path) -> None:
    """Two DDP workers, each encoding half the batch, get the single-process gradient."""
    batch = _batch(training_data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp.npz")
    mp.spawn(_worker, args=(2, port, batch, out), nprocs=2, join=True)
    got = np.load(out)

    torch.manual_seed(0)
    model, loss_fn = _model(), HInfoNCELoss()
    q, d = model(batch.queries, batch.docs)
    loss = loss_fn(q, d, torch.as_tensor(batch.labels))
    loss.backward()
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=1e-4, atol=1e-6)
    temperature_grad = next(loss_fn.parameters()).grad.numpy()
    np.testing.assert_allclose(got["loss_temperature"], temperature_grad, rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_train_a_loadable_model(mined_fast, tmp_path: Path, ray_local) -> None:
    from crops.model.train import train

    out_dir, world = mined_fast
    cfg = TrainConfig(
        samples=str(out_dir / "samples.parquet"),
        videos=[str(world / "videos.parquet"), str(out_dir / "synth_videos.parquet")],
        out=str(tmp_path / "model"),
        workers=2,
        steps_per_epoch=4,
        stop=StopRule(max_steps=8, eval_every=4),
    )
    summary = train(cfg)
    model = DualEncoder.load(tmp_path / "model")
    emb = model.embed(["python loop tutorial"], side="query")
    assert emb.shape == (1, model.dim) and np.isclose(np.linalg.norm(emb), 1, atol=1e-5)
    rows = [json.loads(x) for x in (tmp_path / "model/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r]
    assert len(steps) == 8 and all(np.isfinite(r["loss"]) for r in steps)
    start = rows[0]
    assert (start["event"], start["world"], start["resumed_from"]) == ("start", 2, None)
    assert start["total_steps"] == 8 and start["val_queries"] > 0
    assert summary["metrics"]["epoch"] == 1
    saved = json.loads((tmp_path / "model/training.json").read_text())
    assert saved["config"]["loss"] == "h-infonce"
    validation = saved["validation"]
    assert [p["step"] for p in validation["curve"]] == [4, 8]  # every 4 steps, and the cap
    assert validation["stopped"] == "max_steps"
    assert validation["why_stopped"].startswith("reached the cap of 8 steps")
    assert set(validation["held_out"]).isdisjoint(_training_queries(saved))


def _training_queries(saved: dict) -> set[str]:
    """Queries the batches could draw: the samples' queries minus the held-out ones."""
    import polars as pl

    queries = set(pl.read_parquet(saved["config"]["samples"])["query"].unique().to_list())
    return queries - set(saved["validation"]["held_out"])


@pytest.mark.slow
def test_training_stops_on_patience_and_writes_the_best_model(
    mined_fast, tmp_path: Path, ray_local
) -> None:
    """Patience 1 with an unreachable min_delta: the second evaluation stops training, and the
    model written is the curve's highest point (its validation recall, measured again)."""
    from crops.model.convergence import RecallProbe, split_by_query
    from crops.model.data import load_training_data
    from crops.model.train import train

    out_dir, world = mined_fast
    cfg = TrainConfig(
        samples=str(out_dir / "samples.parquet"),
        videos=[str(world / "videos.parquet"), str(out_dir / "synth_videos.parquet")],
        out=str(tmp_path / "model"),
        workers=1,
        stop=StopRule(max_steps=500, eval_every=3, patience=1, min_delta=1.0),
    )
    summary = train(cfg)
    validation = summary["validation"]
    assert validation["stopped"] == "converged" and summary["steps"] == 6
    assert [p["step"] for p in validation["curve"]] == [3, 6]
    top = max(validation["curve"], key=lambda p: p["recall"])  # the first highest point
    assert validation["best_step"] == top["step"]
    assert validation["why_stopped"].startswith("converged: no recall@100 gain above 1.0")
    data = load_training_data(cfg.samples, cfg.videos)
    _, held = split_by_query(data, cfg.stop.val_fraction, cfg.seed, cfg.positive_min_label)
    probe = RecallProbe(data, held, k=cfg.stop.val_k, min_label=cfg.positive_min_label)
    written = probe.recall(DualEncoder.load(tmp_path / "model"))
    assert written == pytest.approx(top["recall"], abs=1e-6)


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_checkpoint(
    mined_fast, tmp_path: Path, monkeypatch, ray_local
) -> None:
    from crops.model.train import train

    out_dir, world = mined_fast
    flag = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"1:2:1:{flag}")  # rank 1 dies at epoch 1, step 2
    cfg = TrainConfig(
        samples=str(out_dir / "samples.parquet"),
        videos=[str(world / "videos.parquet"), str(out_dir / "synth_videos.parquet")],
        out=str(tmp_path / "model"),
        workers=2,
        steps_per_epoch=4,
        checkpoint_every=4,
        stop=StopRule(max_steps=12, eval_every=4),
        name="fault",
    )
    summary = train(cfg)
    assert flag.exists(), "the worker was never killed"
    rows = [json.loads(x) for x in (tmp_path / "model/metrics.jsonl").read_text().splitlines()]
    starts = [r for r in rows if r.get("event") == "start"]
    assert starts[0]["resumed_from"] is None
    assert starts[1]["resumed_from"] == {"epoch": 0, "step": 4}  # epoch 0's checkpoint
    epoch1 = [r for r in rows if r.get("epoch") == 1 and "step" in r]
    assert [r["step"] for r in epoch1] == [0, 1, 0, 1, 2, 3]  # died at step 2, replayed
    assert summary["metrics"]["epoch"] == 2 and summary["metrics"]["global_step"] == 12
    DualEncoder.load(tmp_path / "model")


@pytest.mark.e2e
def test_cli_train_writes_a_loadable_model(
    run, mined_fast, tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user runs it: relative paths (the Ray workers run in other folders), the step count
    and the positive threshold on the command line, the checkpoints beside the model folder."""
    out_dir, world = mined_fast
    for name, src in (("samples.parquet", out_dir), ("videos.parquet", world)):
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / name).symlink_to(src / name)
    (tmp_path / "data" / "synth_videos.parquet").symlink_to(out_dir / "synth_videos.parquet")
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(
        "train",
        "--samples",
        "data/samples.parquet",
        "--videos",
        "data/videos.parquet",
        "--out",
        "models/MD",
        "--loss",
        "infonce",
        "--positive-min-label",
        "3",
        "--workers",
        "2",
        "--steps-per-epoch",
        "3",
        "--max-steps",
        "3",
    )
    assert code == 0, stderr
    assert "model written" in stdout
    md = tmp_path / "models" / "MD"
    model = DualEncoder.load(md)
    assert model.embed(["a query"], side="query").shape == (1, model.dim)
    training = json.loads((md / "training.json").read_text())
    cfg = training["config"]
    assert cfg["videos"][1].endswith("synth_videos.parquet")  # found beside the samples
    assert cfg["samples"] == str(tmp_path / "data" / "samples.parquet")  # resolved on the driver
    assert cfg["positive_min_label"] == 3 and cfg["steps_per_epoch"] == 3
    assert training["metrics"]["global_step"] == 3
    assert not (md / "checkpoints").exists()  # the served folder holds the model only
    assert any((tmp_path / "models" / "MD-checkpoints").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--encoder", "word2vec"], "word2vec"),
        (["--loss", "hinge"], "hinge"),
        (["--group-size", "1"], "group_size"),
        (["--synth-videos", "/no/such.parquet"], "/no/such.parquet"),
    ],
)
def test_cli_train_rejects_bad_options(run, mined_fast, tmp_path: Path, args, message) -> None:
    out_dir, world = mined_fast
    code, _, stderr = run(
        "train",
        "--samples",
        out_dir / "samples.parquet",
        "--videos",
        world / "videos.parquet",
        "--out",
        tmp_path / "MD",
        *args,
    )
    assert code == 2
    assert message in stderr


def test_cli_train_needs_its_files(run, tmp_path: Path) -> None:
    code, _, stderr = run(
        "train",
        "--samples",
        tmp_path / "none.parquet",
        "--videos",
        tmp_path / "v.parquet",
        "--out",
        tmp_path / "MD",
    )
    assert code == 2 and "none.parquet" in stderr


def test_the_rayjob_entry_point_is_crops_train() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crops.ray_jobs.train",
            "--samples",
            "/no/such.parquet",
            "--videos",
            "/no/v.parquet",
            "--out",
            "/tmp/never",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--samples /no/such.parquet: not found" in done.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(hard_negatives="bm25"), "needs n_hard"),
        (dict(n_hard=3), "needs hard_negatives"),
        (dict(queries_per_batch=2, workers=4), "every worker needs queries"),
    ],
)
def test_train_config_refuses_options_that_do_nothing(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(samples="s", videos=["v"], out="o", **options)


def test_schema_errors_survive_pickling() -> None:
    import pickle

    from crops.schema import SchemaError

    err = pickle.loads(pickle.dumps(SchemaError("/data/samples.parquet", "label", "missing")))
    assert str(err) == "/data/samples.parquet: column 'label': missing"
    assert err.column == "label"


def test_cli_train_reports_a_bad_samples_file_before_starting_ray(
    run, mined_fast, tmp_path: Path
) -> None:
    import polars as pl

    out_dir, world = mined_fast
    bad = tmp_path / "samples.parquet"
    pl.read_parquet(out_dir / "samples.parquet").drop("label").write_parquet(bad)
    code, _, stderr = run(
        "train", "--samples", bad, "--videos", world / "videos.parquet", "--out", tmp_path / "MD"
    )
    assert code == 2
    assert "column 'label'" in stderr and "missing" in stderr


@pytest.mark.e2e
def test_cli_train_output_is_the_progress_and_a_summary(mined_fast, tmp_path: Path) -> None:
    """`crops train` in its own process, as a user runs it: Ray's per-worker chatter (the
    controller's "Failed to query ... actor state" lines were half of a run's output) stays in
    Ray's logs; the terminal gets the progress and the summary."""
    out_dir, world = mined_fast
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crops.cli",
            "train",
            "--samples",
            str(out_dir / "samples.parquet"),
            "--videos",
            str(world / "videos.parquet"),
            "--out",
            str(tmp_path / "MD"),
            "--workers",
            "2",
            "--max-steps",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    both = done.stdout + done.stderr
    assert "model written to" in done.stdout
    assert "Failed to query" not in both
    assert "RayTrainWorker" not in both
    assert len(both.splitlines()) < 20, both
