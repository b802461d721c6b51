"""Benchmark: dual-encoder training throughput against sentence-transformers, and Ray overhead.

Data: a tiny world (seed 1) simulated and mined without the filter model into a temp dir, or
existing files (--samples, --videos).

(b) MiniLM training throughput, in (query, positive) pairs per second. Reference, in the same
process: sentence-transformers' MultipleNegativesRankingLoss (in-batch negatives, scale 20 =
1 / 0.05) on the same MiniLM weights. Each step takes B queries with one positive each (the
query's best-labelled sample; no doc twice in a batch), the same batches for both sides:
- ours: build_dual_encoder("hf:minilm") (one shared tower) + HInfoNCELoss on a B x B label
  matrix (diagonal: the positive's label, 0 elsewhere: exactly in-batch InfoNCE) + AdamW;
- theirs: SentenceTransformer(MiniLM folder) + MultipleNegativesRankingLoss, a plain manual loop
  (model.preprocess, the loss's forward(features, labels)) with the same AdamW, not the HF Trainer.
max_length 128 on both, 2 torch threads, a warm-up, then blocks of steps alternating which side
goes first (so load on the machine hits both alike). Goal: ours / theirs >= 0.9.

(c) Hash-encoder training throughput (issue 14: goal >= 10,000 samples/s on 2 cores, and Ray
at steady state within 1.3x of a plain loop). The same H-InfoNCE run (--ray-steps steps of 32
queries x group 8, one epoch, no validation split), in one process without Ray and through
crops.model.train.train (what `crops train --encoder hash` runs) with 1 and 2 workers:
- plain, dense AdamW: the update before issue 14 (texts hashed in the step, one AdamW over
  every parameter), the reference of the speed-up;
- plain, torch SparseAdam: torch's own sparse idiom (EmbeddingBag(sparse=True), SparseAdam);
- plain, touched rows: crops.model.sparse's step (what the workers run), the plain loop the
  Ray runs are compared with;
- plain, touched rows, N processes (for each --workers N > 1): the same step in N processes
  under torch.multiprocessing and gloo, without Ray: the same worker count's reference, so
  "same-n / Ray" is Ray's own overhead, apart from how the step scales on the machine.
Plain loops run with --plain-threads torch threads (default 1; the Ray workers get one CPU
each). Steady state is samples/s after --ray-warmup steps (Ray: from the running rate of each
step row in OUT/metrics.jsonl and the known batch sizes); wall is end to end (Ray: start-up,
workers, data and hashing, steps, checkpoint). The batcher draws each batch inside the timed
loop, as in the trainer.

    python bench/bench_train.py                 # both parts
    python bench/bench_train.py --part b --steps 30
    python bench/bench_train.py --part c --ray-steps 300 --samples S.parquet --videos V.parquet ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure  # noqa: E402

from crops.model.data import GroupBatcher, TrainingData, load_training_data  # noqa: E402
from crops.model.encoders import build_dual_encoder  # noqa: E402
from crops.model.losses import HInfoNCELoss  # noqa: E402
from crops.model.names import minilm_path  # noqa: E402
from crops.model.train import TrainConfig, make_loss, train  # noqa: E402

GOAL_RATIO = 0.9
MNRL_SCALE = 20.0  # = 1 / temperature 0.05
Pair = tuple[str, str, int]  # query, positive doc text, its label


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def make_data(tmp: Path) -> tuple[Path, list[Path]]:
    """Simulate the tiny world (seed 1) and mine it without the filter model and without
    synthesis (a speed bench needs no LLM, and never the oracle): (samples, videos)."""
    from crops.mining.config import MineConfig
    from crops.mining.mine import mine
    from crops.mining.synthesis import NoSynthesis
    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate

    world, out = tmp / "world", tmp / "mined"
    simulate(WorldConfig.for_scale("tiny", seed=1), world)
    mine(world, out, MineConfig(filter_model="none", llm_backend="none"), NoSynthesis())
    return out / "samples.parquet", [world / "videos.parquet", out / "synth_videos.parquet"]


# ------------------------------------------------------------------ (b) MiniLM vs MNRL


def pair_batches(data: TrainingData, batch: int, seed: int = 0) -> Iterator[list[Pair]]:
    """Endless batches of (query, best-labelled sample, label); a doc appears once per batch."""
    pairs = [
        (data.queries[i], data.texts[int(docs[0])], int(labels[0]))
        for i, (docs, labels) in enumerate(data.groups)  # groups are sorted by label, best first
        if labels[0] > 0
    ]
    if len(pairs) < batch:
        raise SystemExit(f"only {len(pairs)} queries with a positive sample, fewer than B={batch}")
    rng = np.random.default_rng(seed)
    while True:
        cur: list[Pair] = []
        for k in rng.permutation(len(pairs)):
            if any(pairs[k][1] == p[1] for p in cur):
                continue
            cur.append(pairs[k])
            if len(cur) == batch:
                yield cur
                cur = []


def part_b(data: TrainingData, steps: int, batch: int, block: int, warmup: int) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    batches = pair_batches(data, batch)
    plan = [next(batches) for _ in range(warmup + steps)]  # both sides see these, in order

    torch.manual_seed(0)
    ours = build_dual_encoder("hf:minilm", max_length=128)
    h_loss = HInfoNCELoss(temperature=1 / MNRL_SCALE)
    ours_opt = torch.optim.AdamW([*ours.parameters(), *h_loss.parameters()], lr=2e-5)
    st = SentenceTransformer(minilm_path(), device="cpu")
    st.max_seq_length = 128
    mnrl = MultipleNegativesRankingLoss(st, scale=MNRL_SCALE)
    st_opt = torch.optim.AdamW(st.parameters(), lr=2e-5)

    def ours_loss(pairs: list[Pair]) -> torch.Tensor:
        q, d = ours([p[0] for p in pairs], [p[1] for p in pairs])
        labels = torch.diag(torch.tensor([p[2] for p in pairs], dtype=torch.long))
        return h_loss(q, d, labels)

    def st_loss(pairs: list[Pair]) -> torch.Tensor:
        features = [st.preprocess([p[0] for p in pairs]), st.preprocess([p[1] for p in pairs])]
        return mnrl(features, None)

    # the two losses are the same quantity: check on the first batch, eval mode (no dropout)
    ours.eval()
    st.eval()
    with torch.no_grad():
        l_ours, l_st = float(ours_loss(plan[0])), float(st_loss(plan[0]))
    ours.train()
    st.train()

    def stepper(loss_fn: Callable[[list[Pair]], torch.Tensor], opt: torch.optim.Optimizer):
        def step(pairs: list[Pair]) -> float:
            t0 = time.perf_counter()
            loss = loss_fn(pairs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t0

        return step

    sides = {
        "ours (H-InfoNCE)": stepper(ours_loss, ours_opt),
        "ST MNRL": stepper(st_loss, st_opt),
    }
    names = list(sides)
    for name in names:
        for k in range(warmup):
            sides[name](plan[k])
    times: dict[str, list[float]] = {name: [] for name in names}
    done, rnd = 0, 0
    while done < steps:
        n = min(block, steps - done)
        for name in names if rnd % 2 == 0 else names[::-1]:
            times[name] += [sides[name](plan[warmup + done + k]) for k in range(n)]
        done, rnd = done + n, rnd + 1

    rate = {name: batch * len(t) / sum(t) for name, t in times.items()}
    print(
        f"\n== (b) MiniLM training step, B={batch} (query, positive) pairs, in-batch negatives, "
        f"max_length 128, AdamW lr 2e-5, {torch.get_num_threads()} threads; {warmup} warm-up "
        f"steps, then {steps} timed steps each in blocks of {block}, alternating"
    )
    print(f"{'side':<18}{'pairs/s':>10}{'median step ms':>16}{'min step ms':>13}")
    for name, t in times.items():
        print(
            f"{name:<18}{rate[name]:>10.1f}{statistics.median(t) * 1e3:>16.0f}{min(t) * 1e3:>13.0f}"
        )
    same = abs(l_ours - l_st) <= 1e-3 * max(1.0, abs(l_st))
    print(
        f"first-batch loss, eval mode: ours {l_ours:.5f}, MNRL {l_st:.5f} "
        f"(same quantity: {verdict(same)})"
    )
    ratio = rate[names[0]] / rate[names[1]]
    med = statistics.median(times[names[1]]) / statistics.median(times[names[0]])
    print(
        f"ours / ST MNRL throughput {ratio:.2f}x (by median step {med:.2f}x); "
        f"goal >= {GOAL_RATIO}: {verdict(ratio >= GOAL_RATIO)}"
    )


# ------------------------------------------------------------------ (c) hash encoder


def plan(cfg: TrainConfig) -> tuple[TrainingData, list]:
    """The data and the batches a run of `cfg` trains on (a pure function of seed and epoch;
    no validation split: the bench configs hold no queries out)."""
    data = load_training_data(cfg.samples, cfg.videos)
    batcher = GroupBatcher(
        data, queries_per_batch=cfg.queries_per_batch, group_size=cfg.group_size, seed=cfg.seed
    )
    batcher.min_queries = cfg.workers
    return data, [b for _, b in zip(range(cfg.stop.max_steps), batcher.epoch(0), strict=False)]


def steady(samples: list[int], seconds: list[float], warmup: int) -> float:
    """Samples per second after the first `warmup` steps (end times of each step given)."""
    done = np.cumsum(samples)
    return float((done[-1] - done[warmup - 1]) / (seconds[-1] - seconds[warmup - 1]))


def plain_run(cfg: TrainConfig, kind: str, warmup: int) -> dict:
    """A plain single-process loop of the same model and loss on the same batches: the
    batcher's work is in each step as in the trainer (batches are drawn as it goes).

    kind: ``dense``: the update before issue 14 (texts hashed in the step through the LRU
    cache, one AdamW over every parameter: the whole table each step); ``torch-sparse``:
    torch's own sparse idiom (pre-hashed ids, EmbeddingBag(sparse=True), SparseAdam for the
    table, AdamW for the rest); ``rows``: crops.model.sparse's step (pre-hashed ids, the
    touched rows' RowAdam), what the Ray workers run, without Ray.
    """
    from crops.model.encoders import _bucket_ids
    from crops.model.sparse import make_step

    _bucket_ids.cache_clear()  # a worker starts with an empty hash cache too
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    data = load_training_data(cfg.samples, cfg.videos)
    batcher = GroupBatcher(
        data, queries_per_batch=cfg.queries_per_batch, group_size=cfg.group_size, seed=cfg.seed
    )
    model = cfg.build_model()
    loss_fn = make_loss(cfg)
    lr, wd = cfg.learning_rate(), cfg.weight_decay
    if kind == "rows":
        runner = make_step(model, loss_fn, data, lr=lr, weight_decay=wd)
        step_fn = runner.step
    elif kind == "dense":
        opt = torch.optim.AdamW(
            [*model.parameters(), *loss_fn.parameters()], lr=lr, weight_decay=wd
        )

        def step_fn(batch) -> float:
            q, d = model(batch.queries, batch.docs)
            loss = loss_fn(q, d, torch.as_tensor(batch.labels))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

    elif kind == "torch-sparse":
        tower = model.query_tower
        tower.embedding.sparse = True
        table = tower.embedding.weight
        docs, queries = tower.bucket_table(data.texts), tower.bucket_table(data.queries)
        sparse_opt = torch.optim.SparseAdam([table], lr=lr)
        rest = [p for p in model.parameters() if p is not table] + list(loss_fn.parameters())
        opt = torch.optim.AdamW(rest, lr=lr, weight_decay=wd)

        def step_fn(batch) -> float:
            q_ids = queries.bucket_ids(batch.query_index)
            d_ids = docs.bucket_ids(batch.doc_index)
            q, d = model(q_ids, d_ids)
            loss = loss_fn(q, d, torch.as_tensor(batch.labels))
            opt.zero_grad(set_to_none=True)
            sparse_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sparse_opt.step()
            return float(loss.detach())
    else:
        raise ValueError(kind)
    setup = time.perf_counter() - t0
    model.train()
    samples, ends, losses = [], [], []
    start = time.perf_counter()
    for step, batch in enumerate(batcher.epoch(0)):
        if step >= cfg.stop.max_steps:
            break
        losses.append(step_fn(batch))
        samples.append(len(batch.docs))
        ends.append(time.perf_counter() - start)
    model.save(Path(cfg.out) / "model")  # the Ray run checkpoints and copies its model out too
    return {
        "steps": len(samples),
        "samples": int(sum(samples)),
        "setup_s": setup,
        "loop_s": ends[-1],
        "samples_per_s": steady(samples, ends, warmup),
        "loss_first": float(np.mean(losses[:10])),
        "loss_last": float(np.mean(losses[-10:])),
    }


def _plain_worker(rank: int, world: int, port: int, cfg_json: str, warmup: int, out: str) -> None:
    """One process of the plain distributed loop: gloo, one torch thread (a Ray worker's
    CPU), crops.model.sparse's step on its shard of the same batches; rank 0 writes the rate."""
    import torch.distributed as dist

    from crops.model.sparse import make_step

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig.model_validate_json(cfg_json)
        torch.manual_seed(cfg.seed)
        data = load_training_data(cfg.samples, cfg.videos)
        batcher = GroupBatcher(
            data, queries_per_batch=cfg.queries_per_batch, group_size=cfg.group_size, seed=cfg.seed
        )
        batcher.min_queries = world
        model, loss_fn = cfg.build_model(), make_loss(cfg)
        runner = make_step(
            model,
            loss_fn,
            data,
            lr=cfg.learning_rate(),
            weight_decay=cfg.weight_decay,
            rank=rank,
            world=world,
        )
        runner.train()
        samples, ends = [], []
        dist.barrier()
        start = time.perf_counter()
        for step, batch in enumerate(batcher.epoch(0)):
            if step >= cfg.stop.max_steps:
                break
            runner.step(batch)
            samples.append(len(batch.docs))
            ends.append(time.perf_counter() - start)
        if rank == 0:
            rate = steady(samples, ends, warmup)
            Path(out).write_text(json.dumps({"samples_per_s": rate, "steps": len(samples)}))
    finally:
        dist.destroy_process_group()


def plain_distributed(cfg: TrainConfig, warmup: int, tmp: Path) -> dict:
    """The plain loop with cfg.workers processes (torch.multiprocessing + gloo, no Ray): the
    same worker count's reference, so the Ray ratio measures Ray and not the scaling."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp / f"plain-{cfg.workers}.json"
    args = (cfg.workers, port, cfg.model_dump_json(), warmup, str(out))
    mp.spawn(_plain_worker, args=args, nprocs=cfg.workers)
    return json.loads(out.read_text())


def ray_steady(out: Path, sizes: list[int], warmup: int) -> tuple[float, int]:
    """Steady-state samples/s of a Ray run from its metrics.jsonl: each step row holds the
    epoch's running rate, so a step's end time is (samples so far) / rate; the batches'
    sizes are known (the same pure function of seed and epoch)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r and "samples_per_s" in r]
    done = np.cumsum(sizes[: len(steps)])
    ends = [int(n) / r["samples_per_s"] for n, r in zip(done, steps, strict=True)]
    return steady(sizes[: len(steps)], ends, warmup), len(steps)


def part_c(
    samples: Path, videos: list[Path], steps: int, workers: list[int], warmup: int, tmp: Path
) -> None:
    import ray

    from crops.model.convergence import StopRule

    def config(out: str, n: int) -> TrainConfig:
        return TrainConfig(
            samples=str(samples),
            videos=[str(v) for v in videos],
            out=out,
            encoder="hash",
            loss="h-infonce",
            stop=StopRule(max_steps=steps, patience=None, val_fraction=0),
            queries_per_batch=32,
            group_size=8,
            workers=n,
        )

    load_before = os.getloadavg()[0]
    runs: dict[str, tuple] = {}
    for kind in ("dense", "torch-sparse", "rows"):
        m = measure(kind, lambda k=kind: plain_run(config(str(tmp / k), 1), k, warmup))
        runs[kind] = (m, m.result["samples_per_s"])
    for n in workers:
        if n > 1:
            m = measure(
                f"plain {n}", lambda n=n: plain_distributed(config(str(tmp), n), warmup, tmp)
            )
            runs[f"plain-{n}"] = (m, m.result["samples_per_s"])
    sizes = [len(b.docs) for b in plan(config(str(tmp / "x"), 1))[1]]
    for n in workers:
        out = tmp / f"ray-{n}"
        m = measure(f"ray {n}", lambda o=out, n=n: train(config(str(o), n)))
        rate, logged = ray_steady(out, sizes, warmup)
        runs[f"ray-{n}"] = (m, rate)
        assert logged == steps, f"{logged} steps logged, {steps} expected"
    ray.shutdown()

    total = sum(sizes)
    print(
        f"\n== (c) hash encoder (65,537 x 128 table + MLP), H-InfoNCE, {steps} steps of 32 "
        f"queries x group 8 ({total:,} samples); steady state = samples/s after {warmup} "
        f"warm-up steps; plain loops: {torch.get_num_threads()} torch thread(s); Ray: 1 CPU "
        f"per worker"
    )
    names = {
        "dense": "plain, dense AdamW (before issue 14)",
        "torch-sparse": "plain, torch SparseAdam",
        "rows": "plain, touched rows (crops)",
    }
    for n in workers:
        names[f"ray-{n}"] = f"crops train, Ray {n} worker{'s' if n > 1 else ''}"
        if n > 1:
            names[f"plain-{n}"] = f"plain, touched rows, {n} processes"
    print(
        f"{'run':<38}{'samples/s':>11}{'wall s':>9}{'vs dense':>10}{'plain/Ray':>11}"
        f"{'same-n/Ray':>12}{'RSS MiB':>9}"
    )
    base, plain = runs["dense"][1], runs["rows"][1]
    for key, (m, rate) in runs.items():
        ratio = f"{plain / rate:>10.2f}x" if key.startswith("ray") else f"{'':>11}"
        n = int(key.split("-")[1]) if key.startswith("ray") else 0
        same = runs.get(f"plain-{n}", runs["rows"] if n == 1 else None)
        same_n = f"{same[1] / rate:>11.2f}x" if same and key.startswith("ray") else f"{'':>12}"
        print(
            f"{names[key]:<38}{rate:>11,.0f}{m.seconds:>9.1f}{rate / base:>9.1f}x{ratio}"
            f"{same_n}{m.peak_rss_mib:>9,.0f}"
        )
    for kind in ("dense", "torch-sparse", "rows"):
        r = runs[kind][0].result
        print(
            f"{names[kind]}: set-up {r['setup_s']:.1f} s (data, model, hashing the corpus), "
            f"loss {r['loss_first']:.2f} (first 10 steps) -> {r['loss_last']:.2f} (last 10)"
        )
    for n in workers:
        m = runs[f"ray-{n}"][0]
        print(
            f"Ray {n}: wall {m.seconds:.1f} s = ray.init, workers, data and hashing, "
            f"{steps} steps, checkpoint, copy-out (trainer.fit {m.result['wall_s']:.1f} s)"
        )
    print(
        f"machine: {os.cpu_count()} CPUs, load average (1 min) {load_before:.2f} before the runs,"
        f" {os.getloadavg()[0]:.2f} after (other processes share the cores)"
    )
    best_ray = max(runs[f"ray-{n}"][1] for n in workers)
    print(
        f"goals: >= 10,000 samples/s: {verdict(best_ray >= 10_000)} ({best_ray:,.0f}, "
        f"{best_ray / base:.1f}x the dense update); Ray steady state within 1.3x of the plain "
        f"loop: "
        + ", ".join(f"{n} worker(s) {verdict(plain / runs[f'ray-{n}'][1] <= 1.3)}" for n in workers)
        + "; against the plain loop with as many processes: "
        + ", ".join(
            f"{n} {verdict(runs.get(f'plain-{n}', runs['rows'])[1] / runs[f'ray-{n}'][1] <= 1.3)}"
            for n in workers
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["b", "c", "all"], default="all")
    p.add_argument("--steps", type=int, default=15, help="(b) timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="(b) warm-up steps per side")
    p.add_argument("--block", type=int, default=5, help="(b) steps per alternating block")
    p.add_argument("--batch", type=int, default=32, help="(b) pairs per step")
    p.add_argument("--ray-steps", type=int, default=200, help="(c) steps of every run")
    p.add_argument("--ray-warmup", type=int, default=20, help="(c) steps before steady state")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="(c) Ray workers")
    p.add_argument("--threads", type=int, default=2, help="torch threads of (b)")
    p.add_argument("--plain-threads", type=int, default=1, help="torch threads of (c)'s loops")
    p.add_argument("--samples", type=Path, help="samples.parquet (default: mine a tiny world)")
    p.add_argument("--videos", type=Path, nargs="+", help="videos files for --samples")
    args = p.parse_args()
    if (args.samples is None) != (args.videos is None):
        p.error("--samples and --videos go together")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        if args.samples is None:
            made = measure("simulate + mine tiny", lambda: make_data(tmp))
            samples, videos = made.result
            print(f"data: tiny world (seed 1) simulated and mined in {made.seconds:.1f} s")
        else:
            samples, videos = args.samples, list(args.videos)
        data = load_training_data(samples, videos)
        print(
            f"data: {len(data.queries):,} queries, {data.n_samples:,} samples, "
            f"{len(data.texts):,} docs ({samples})"
        )
        if args.part in ("b", "all"):
            part_b(data, args.steps, args.batch, args.block, args.warmup)
        if args.part in ("c", "all"):
            torch.set_num_threads(args.plain_threads)
            part_c(samples, videos, args.ray_steps, args.workers, args.ray_warmup, tmp)


if __name__ == "__main__":
    main()
