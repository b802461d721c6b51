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

(c) Ray Train overhead: the same hash-encoder H-InfoNCE run (1 epoch of at most --ray-steps
steps, 32 queries x group 8 per batch) as a plain single-process loop in this process (the same
per-step work as crops.model.train.train_loop without Ray or DDP) and through
crops.model.train.train with 2 workers. Wall time end to end (Ray: including start-up) and
steady-state samples/s (Ray: samples_per_s of the last step in OUT/metrics.jsonl, the epoch's
running rate; plain: the same running rate, measured).

    python bench/bench_train.py                 # both parts
    python bench/bench_train.py --part b --steps 30
    python bench/bench_train.py --part c --ray-steps 60 --samples S.parquet --videos V.parquet ...
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
from crops.model.encoders import build_dual_encoder, minilm_path  # noqa: E402
from crops.model.losses import HInfoNCELoss  # noqa: E402
from crops.model.train import TrainConfig, make_loss, train  # noqa: E402

GOAL_RATIO = 0.9
MNRL_SCALE = 20.0  # = 1 / temperature 0.05
Pair = tuple[str, str, int]  # query, positive doc text, its label


def verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def make_data(tmp: Path) -> tuple[Path, list[Path]]:
    """Simulate the tiny world (seed 1) and mine it without the filter model: (samples, videos)."""
    from crops.engine.config import MineConfig
    from crops.engine.knowledge import KnowledgeBackend
    from crops.engine.mine import mine
    from crops.world.config import WorldConfig
    from crops.world.simulate import simulate
    from crops.world.world import World

    world, out = tmp / "world", tmp / "mined"
    simulate(WorldConfig.for_scale("tiny", seed=1), world)
    mine(world, out, MineConfig(filter_model="none"), KnowledgeBackend(World.load(world)))
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


# ------------------------------------------------------------------ (c) Ray overhead


def plain_run(cfg: TrainConfig) -> dict:
    """train_loop's per-step work in this process, no Ray or DDP: data, batcher, model, steps."""
    from crops.model.encoders import _bucket_ids

    _bucket_ids.cache_clear()  # the Ray workers start with an empty hash cache too
    torch.manual_seed(cfg.seed)
    data = load_training_data(cfg.samples, cfg.videos)
    batcher = GroupBatcher(
        data, queries_per_batch=cfg.queries_per_batch, group_size=cfg.group_size, seed=cfg.seed
    )
    model = cfg.build_model()
    loss_fn = make_loss(cfg)
    params = [*model.parameters(), *loss_fn.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=cfg.weight_decay)
    total = min(batcher.batches_per_epoch, cfg.max_steps_per_epoch or batcher.batches_per_epoch)
    model.train()
    t0, seen, steps = time.perf_counter(), 0, 0
    for step, batch in enumerate(batcher.epoch(0)):
        if step >= total:
            break
        q, d = model(batch.queries, batch.docs)
        loss = loss_fn(q, d, torch.as_tensor(batch.labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(batch.docs)
        steps += 1
    rate = seen / (time.perf_counter() - t0)
    model.save(Path(cfg.out) / "model")  # the Ray run checkpoints and copies its model out too
    return {"steps": steps, "samples": seen, "samples_per_s": rate}


def part_c(samples: Path, videos: list[Path], steps: int, workers: int, tmp: Path) -> None:
    import ray

    def config(out: str, n: int) -> TrainConfig:
        return TrainConfig(
            samples=str(samples),
            videos=[str(v) for v in videos],
            out=out,
            encoder="hash",
            loss="h-infonce",
            epochs=1,
            max_steps_per_epoch=steps,
            queries_per_batch=32,
            group_size=8,
            workers=n,
        )

    plain = measure("plain loop", lambda: plain_run(config(str(tmp / "plain"), 1)))
    ray_out = tmp / "ray"
    ray_run = measure("Ray Train", lambda: train(config(str(ray_out), workers)))
    rows = [json.loads(line) for line in (ray_out / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "samples_per_s" in r and "step" in r]
    ray_rate = step_rows[-1]["samples_per_s"]
    fit_s = ray_run.result["wall_s"]
    ray.shutdown()

    print(
        f"\n== (c) hash encoder, H-InfoNCE, 1 epoch of {plain.result['steps']} steps "
        f"(32 queries x group 8; {plain.result['samples']:,} samples)"
    )
    print(f"{'run':<34}{'wall s':>9}{'samples/s':>12}{'peak RSS MiB':>14}")
    print(
        f"{'plain loop, 1 process':<34}{plain.seconds:>9.1f}"
        f"{plain.result['samples_per_s']:>12,.0f}{plain.peak_rss_mib:>14,.0f}"
    )
    label = f"Ray Train, {workers} workers (driver)"
    print(f"{label:<34}{ray_run.seconds:>9.1f}{ray_rate:>12,.0f}{ray_run.peak_rss_mib:>14,.0f}")
    print(
        f"Ray wall: {ray_run.seconds - fit_s:.1f} s ray.init + result copy-out, {fit_s:.1f} s "
        f"trainer.fit (workers, process group, data, steps, checkpoint); "
        f"{len(step_rows)} steps logged"
    )
    print(
        f"plain: {torch.get_num_threads()} torch threads in this process; Ray: {workers} workers "
        f"x 1 CPU each, gloo all-gather of the embeddings, DDP gradient all-reduce"
    )
    print(
        f"overhead: wall Ray / plain {ray_run.seconds / plain.seconds:.1f}x; steady-state "
        f"samples/s plain / Ray {plain.result['samples_per_s'] / ray_rate:.2f}x "
        f"(> 1: Ray slower per sample)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["b", "c", "all"], default="all")
    p.add_argument("--steps", type=int, default=15, help="(b) timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="(b) warm-up steps per side")
    p.add_argument("--block", type=int, default=5, help="(b) steps per alternating block")
    p.add_argument("--batch", type=int, default=32, help="(b) pairs per step")
    p.add_argument("--ray-steps", type=int, default=30, help="(c) max_steps_per_epoch")
    p.add_argument("--workers", type=int, default=2, help="(c) Ray Train workers")
    p.add_argument("--threads", type=int, default=2)
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
            part_c(samples, videos, args.ray_steps, args.workers, tmp)


if __name__ == "__main__":
    main()
