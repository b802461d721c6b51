"""Distributed training of the dual encoder on Ray Train (V2): `crops train`.

Training runs to convergence by default (`crops.model.convergence`): a held-out share of the
training queries is evaluated every few hundred steps, training stops on a patience rule with
a cap, the best model is the one written, and training.json records the curve and the reason.

Every worker builds the same global batch (a pure function of seed and epoch), encodes its
own slice of queries and their docs, and all-gathers the embeddings so the loss sees the whole
global batch as in-batch negatives. The gathered copy of a worker's own slice is the local
tensor itself, so gradients flow into the local shard only; the loss is scaled by the world
size because DDP averages gradients across workers. Hash towers train without DDP: inputs
hashed once per worker, and only the embedding-table rows a batch touches are exchanged and
updated (`crops.model.sparse` has the step and why). A checkpoint every `checkpoint_every` steps
(at an epoch end) and one at the stop go to the
storage path (a folder or an S3-compatible URI); when a worker dies, Ray restarts the group
(FailureConfig) and training resumes from the latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from crops.model.train_config import TrainConfig

log = logging.getLogger(__name__)

#: Test hook: "epoch:step:rank:flagfile" makes that worker die once (when the flag is absent).
FAULT_ENV = "CROPS_FAULT_INJECT"


STATE_FILE = "crops_state.json"


def _state_of(checkpoint) -> dict:
    try:
        with checkpoint.as_directory() as d:
            return json.loads((Path(d) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def newest(*checkpoints, fingerprint: str | None = None):
    """The checkpoint with the most steps among those given that belongs to this configuration
    and these inputs (None when there is none): a run restored by name under other settings
    must start afresh, not resume, nor inherit the old stop rule."""
    found = []
    for c in checkpoints:
        state = _state_of(c) if c is not None else {}
        if "global_step" in state and (
            fingerprint is None or state.get("fingerprint") == fingerprint
        ):
            found.append((state["global_step"], c))
    return max(found, key=lambda f: f[0])[1] if found else None


def latest_checkpoint(storage_path: str | None, name: str, fingerprint: str | None = None):
    """The newest complete checkpoint of run `name` under the storage path, or None.

    Ray Train hands a restarted worker group the last checkpoint its controller registered;
    a worker that dies right after reporting can beat that registration. Looking in storage
    (a folder or any pyarrow filesystem URI) makes the resume independent of that race, and
    lets a new driver continue a run.
    """
    if not storage_path:
        return None
    import pyarrow.fs as pafs
    import ray.train

    fs, root = pafs.FileSystem.from_uri(storage_path)
    run = f"{root.rstrip('/')}/{name}"
    try:
        entries = fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
    except OSError:
        return None
    best = None
    for entry in entries:
        if entry.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{entry.path}/{STATE_FILE}") as fh:
                state = json.loads(fh.read())
        except (OSError, ValueError):
            continue  # not a checkpoint of ours, or an incomplete one
        if fingerprint is not None and state.get("fingerprint") != fingerprint:
            continue  # another configuration or other input files: not ours to resume
        if best is None or state["global_step"] > best[0]:
            best = (state["global_step"], entry.path)
    if best is None:
        return None
    return ray.train.Checkpoint(best[1], filesystem=fs)


def make_loss(cfg: TrainConfig):
    from crops.model.losses import HInfoNCELoss, InfoNCELoss, SoftmaxCrossEntropyLoss

    if cfg.loss == "h-infonce":
        return HInfoNCELoss(temperature=cfg.temperature)
    if cfg.loss == "infonce":
        return InfoNCELoss(temperature=cfg.temperature, positive_min_label=cfg.positive_min_label)
    return SoftmaxCrossEntropyLoss(temperature=cfg.temperature)


def _maybe_die(epoch: int, step: int, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    e, s, r, flag = spec.split(":", 3)
    if (int(e), int(s), int(r)) == (epoch, step, rank) and not Path(flag).exists():
        Path(flag).write_text(f"killed rank {rank} at epoch {epoch} step {step}\n")
        os._exit(1)


def _evaluate(stopper, probe, inner, step: int, loss: float, rank: int, world: int):
    """Rank 0 measures validation recall and decides; every worker gets the same stopper
    state back. Returns (stopper, whether this evaluation is the new best)."""
    import torch.distributed as dist

    from crops.model.convergence import EarlyStopping

    decision = [None, False]
    if rank == 0:
        improved = stopper.update(step, probe.recall(inner), loss)
        decision = [stopper.model_dump(), improved]
    if world > 1:
        dist.broadcast_object_list(decision, src=0)
    return EarlyStopping(**decision[0]), bool(decision[1])


def train_loop(config: dict) -> None:
    """The per-worker loop (runs inside Ray Train workers): epochs of `steps_per_epoch` steps
    until the stop rule says so; checkpoints at epoch ends every `checkpoint_every` steps and
    at the stop."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from crops.model.convergence import EarlyStopping, RecallProbe, split_by_query
    from crops.model.data import BM25Negatives, GroupBatcher, ModelNegatives, load_training_data
    from crops.model.encoders import DualEncoder
    from crops.model.sparse import make_step

    cfg = TrainConfig(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    every = load_training_data(cfg.samples, cfg.videos)
    data, held = split_by_query(every, cfg.stop.val_fraction, cfg.seed, cfg.positive_min_label)
    hard = BM25Negatives(data) if cfg.hard_negatives == "bm25" else None
    batcher = GroupBatcher(
        data,
        queries_per_batch=cfg.queries_per_batch,
        group_size=cfg.group_size,
        seed=cfg.seed,
        hard_negatives=hard,
        n_hard=cfg.n_hard,
    )
    batcher.min_queries = world
    if cfg.steps_per_epoch:  # groups are drawn with replacement, so any length is an epoch
        batcher.batches_per_epoch = cfg.steps_per_epoch
    model = cfg.build_model()
    loss_fn = make_loss(cfg)
    start_epoch, resumed = 0, None
    checkpoint = newest(
        ray.train.get_checkpoint(),
        latest_checkpoint(cfg.storage_path, cfg.name, cfg.fingerprint),
        fingerprint=cfg.fingerprint,
    )
    state, best_state = None, None
    stopper = EarlyStopping(rule=cfg.stop)
    if checkpoint:
        with checkpoint.as_directory() as d:
            model = DualEncoder.load(Path(d) / "model")
            state = torch.load(Path(d) / "trainer.pt", weights_only=False)
            if (Path(d) / "best.pt").exists():
                best_state = torch.load(Path(d) / "best.pt", weights_only=True)
        loss_fn.load_state_dict(state["loss"])
        start_epoch = state["epoch"] + 1
        resumed = {"epoch": state["epoch"], "step": state["global_step"]}
        if state.get("stopper"):
            stopper = EarlyStopping(**state["stopper"])
    device = ray.train.torch.get_device()
    loss_fn.to(device)
    runner = make_step(  # hash towers: row-sparse updates, no DDP; others: DDP + AdamW
        model,
        loss_fn,
        data,
        lr=cfg.learning_rate(),
        weight_decay=cfg.weight_decay,
        rank=rank,
        world=world,
        device=device,
        wrap=lambda m: ray.train.torch.prepare_model(
            m, parallel_strategy="ddp" if world > 1 else None
        ),
    )
    if state is not None:
        runner.load_state_dict(state["optimizer"])
    probe = None
    if held and rank == 0:
        features = getattr(runner, "features", None)  # hash towers: the corpus hashed once
        probe = RecallProbe(
            every,
            held,
            k=cfg.stop.val_k,
            min_label=cfg.positive_min_label,
            max_docs=cfg.stop.val_max_docs,
            seed=cfg.seed,
            corpus=features.docs if features is not None else None,
        )
    inner = runner.module
    global_step = resumed["step"] if resumed else 0
    metrics_path = Path(cfg.out) / "metrics.jsonl"
    per_epoch = batcher.batches_per_epoch
    max_steps = cfg.stop.max_steps
    if rank == 0:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        start = {"event": "start", "world": world, "resumed_from": resumed}
        start.update(total_steps=max_steps, val_queries=len(held), stop=cfg.stop.model_dump())
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(start) + "\n")

    epoch, last_checkpoint = start_epoch, global_step
    while stopper.stopped is None:
        if cfg.hard_negatives == "model":  # ANCE: negatives from the current model's own index
            inner.eval()
            pools = [ModelNegatives(inner, data).pool if rank == 0 else None]
            if world > 1:  # one search, the same negatives on every worker
                torch.distributed.broadcast_object_list(pools, src=0)
            batcher.hard = ModelNegatives.from_pools(pools[0])
        runner.train()
        t0, seen, losses = time.perf_counter(), 0, []
        for step, batch in enumerate(batcher.epoch(epoch)):
            if step >= per_epoch:
                break
            _maybe_die(epoch, step, rank)
            losses.append(runner.step(batch))  # crops.model.sparse: forward, loss, update
            global_step += 1
            seen += len(batch.docs)
            row = None
            if rank == 0:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                row = {
                    "epoch": epoch,
                    "step": step,
                    "global_step": global_step,
                    "loss": losses[-1],
                    "temperature": float(getattr(loss_fn, "temperature", cfg.temperature)),
                    "samples_per_s": rate,
                }
            if held and (global_step % cfg.stop.eval_every == 0 or global_step >= max_steps):
                stopper, best = _evaluate(
                    stopper, probe, inner, global_step, losses[-1], rank, world
                )
                if best and rank == 0:  # the best model so far: what training will write
                    best_state = {k: v.detach().clone() for k, v in inner.state_dict().items()}
                runner.train()
                if row is not None:
                    row.update(recall=stopper.curve[-1]["recall"], best_step=stopper.best_step)
            else:
                stopper.cap(global_step)
            if row is not None:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if step % 10 == 0 or step == per_epoch - 1 or stopper.stopped:
                    print(
                        f"[crops train] epoch {epoch + 1} step {global_step}/{max_steps}"
                        f" loss {losses[-1]:.4f} {rate:,.0f} samples/s"
                        + (f" val recall {row['recall']:.4f}" if "recall" in row else ""),
                        flush=True,
                    )
            if stopper.stopped:
                break
        if not losses:  # no batch could be drawn: the loop would otherwise never end
            raise ValueError(
                f"{cfg.samples}: epoch {epoch} drew no batch with {world} queries that have a"
                " sample to rank; too few training queries for this batch setup"
            )
        metrics = {
            "epoch": epoch,
            "global_step": global_step,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "samples_per_s": seen / max(time.perf_counter() - t0, 1e-9),
            "stopped": stopper.stopped or "",
        }
        if not stopper.stopped and global_step - last_checkpoint < cfg.checkpoint_every:
            epoch += 1
            continue
        last_checkpoint = global_step
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                if stopper.stopped and best_state is not None:
                    inner.load_state_dict(best_state)  # the model written is the best one seen
                inner.save(Path(tmp) / "model")
                torch.save(
                    {
                        "epoch": epoch,
                        "global_step": global_step,
                        "optimizer": runner.state_dict(),
                        "loss": loss_fn.state_dict(),
                        "stopper": stopper.model_dump(),
                    },
                    Path(tmp) / "trainer.pt",
                )
                if best_state is not None and not stopper.stopped:
                    torch.save(best_state, Path(tmp) / "best.pt")
                (Path(tmp) / STATE_FILE).write_text(
                    json.dumps(
                        {
                            "epoch": epoch,
                            "global_step": global_step,
                            "fingerprint": cfg.fingerprint,
                            "stopper": stopper.model_dump(),
                        }
                    )
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        epoch += 1


def _worker_env() -> dict[str, str]:
    env = {"RAY_TRAIN_V2_ENABLED": "1"}
    if os.environ.get(FAULT_ENV):
        env[FAULT_ENV] = os.environ[FAULT_ENV]
    return env


class _MetricsTail(threading.Thread):
    """Follows OUT/metrics.jsonl on the driver and reports (done, total) steps to a callback:
    the progress bar of a run whose steps happen in Ray workers."""

    def __init__(self, path: Path, progress: Callable[[str, int, int], None]) -> None:
        super().__init__(daemon=True)
        self.path, self.progress, self.stop = path, progress, threading.Event()
        self.offset = path.stat().st_size if path.exists() else 0
        self.total = 0

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.read()
        self.read()  # the last steps written before the stop

    def read(self) -> None:
        """Report the complete lines appended since the last read."""
        if not self.path.exists():
            return
        try:
            with self.path.open() as fh:
                fh.seek(self.offset)
                lines = fh.read().splitlines(keepends=True)
            if lines and not lines[-1].endswith("\n"):
                lines = lines[:-1]  # a line still being written
            self.offset += sum(len(x.encode()) for x in lines)
            for row in map(json.loads, lines):
                if row.get("event") == "start":
                    self.total = row.get("total_steps", self.total)
                elif "global_step" in row and self.total:
                    self.progress("train", row["global_step"], self.total)
        except (OSError, ValueError) as exc:  # a progress bar must never stop training
            log.warning("progress: cannot read %s: %s", self.path, exc)


def _absolute(path: str) -> str:
    """A local path made absolute on the driver; a URI (s3://...) as it is."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its local paths absolute, as the driver sees them."""
    update = {
        "samples": _absolute(cfg.samples),
        "videos": [_absolute(v) for v in cfg.videos],
        "out": _absolute(cfg.out),
    }
    if cfg.storage_path:
        update["storage_path"] = _absolute(cfg.storage_path)
    return cfg.model_copy(update=update)


def default_storage(out: Path) -> str:
    """Checkpoints go beside the model folder (OUT-checkpoints), not in it: the served folder
    holds the model only."""
    return str(out.with_name(f"{out.name}-checkpoints"))


def train(cfg: TrainConfig, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run training on Ray (local or a cluster) and write the final model to `cfg.out`."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = resolve_paths(cfg)  # Ray workers run elsewhere: relative paths would not be found
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = cfg.storage_path or default_storage(out)
    if not ray.is_initialized():
        # A Ray job's driver (a RayJob, or `ray job submit`) already runs in the job's runtime
        # env, which sets the variable; Ray refuses to merge the same key twice.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        # With a progress bar (the CLI) the workers' own lines stay in Ray's session logs: about
        # half of them were the controller's "Failed to query ... actor state" noise, and the
        # bar and the summary say what a user needs; a failure still raises with its traceback.
        # A Ray job's driver keeps them: its log is where a cluster user reads the steps.
        ray.init(
            include_dashboard=False,
            log_to_driver=progress is None or in_job,
            runtime_env=None if in_job else {"env_vars": {"RAY_TRAIN_V2_ENABLED": "1"}},
        )
    # the same configuration on the same input files resumes (or returns) its own run; other
    # settings or re-mined files start afresh (checkpoints carry this fingerprint)
    digest = hashlib.sha256(cfg.model_dump_json(exclude={"workers", "fingerprint"}).encode())
    for path in [cfg.samples, *cfg.videos]:
        st = Path(path).stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    fingerprint = digest.hexdigest()[:16]
    # Ray Train restores a run by name: other settings get their own run folder
    name = f"{cfg.name}-{fingerprint[:10]}"
    cfg = cfg.model_copy(update={"storage_path": storage, "name": name, "fingerprint": fingerprint})
    from crops.model.convergence import EarlyStopping, split_by_query
    from crops.model.data import load_training_data

    data = load_training_data(cfg.samples, cfg.videos)  # fail here, clearly, not in workers
    kept, held = split_by_query(data, cfg.stop.val_fraction, cfg.seed, cfg.positive_min_label)
    if cfg.stop.patience is not None and not held:
        raise ValueError(
            f"{cfg.samples}: no query has a sample labelled >= {cfg.positive_min_label} to hold"
            " out for validation; train a fixed number of steps instead (patience off)"
        )
    if len(kept.queries) < cfg.workers:
        raise ValueError(
            f"{len(kept.queries)} training queries ({len(held)} held out for validation)"
            f" cannot feed {cfg.workers} workers"
        )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=cfg.model_dump(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=None if cfg.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _worker_env()},
        ),
    )
    t0 = time.perf_counter()
    tail = _MetricsTail(out / "metrics.jsonl", progress) if progress else None
    if tail:
        tail.start()
    try:
        result = trainer.fit()
    finally:
        if tail:
            tail.stop.set()
            tail.join()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
        for item in Path(d, "model").iterdir():
            target = out / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
    stopper = EarlyStopping(**state["stopper"])
    if tail and tail.total:
        progress("train", tail.total, tail.total)
    summary = {
        "samples_without_video": data.quarantined,
        "metrics": result.metrics,
        "steps": state["global_step"],
        "validation": {
            "queries": len(held),
            "held_out": [data.queries[q] for q in held],
            "why_stopped": stopper.why(),
            **stopper.model_dump(),
        },
        "checkpoint": result.checkpoint.path,
        "wall_s": time.perf_counter() - t0,
        "config": cfg.model_dump(),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
