"""Benchmark: H-InfoNCE forward + backward time against InfoNCE and a naive per-anchor loop.

One training-shaped batch: 512 queries x a group of 8 docs each = 4,096 docs, dim 128, labels
0..5 drawn inside each query's group and 0 across groups (in-batch negatives), L2-normalised
random embeddings requiring grad. Each run is forward + backward on that batch, 2 torch threads,
after a warm-up, the two fast losses interleaved repeat by repeat (so load on the machine hits
both alike); the figure is the median of the repeats.

References, in the same process:
- InfoNCE on the same batch (positives: label >= 4), goal: H-InfoNCE / InfoNCE <= 1.3;
- the formula computed anchor by anchor (a Python loop, one log-sum-exp per anchor) on a subset
  of the queries, scaled linearly to the batch, goal: H-InfoNCE >= 20x faster.

    python bench/bench_loss.py
    python bench/bench_loss.py --repeats 20 --naive-queries 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from crops.model.losses import HInfoNCELoss, InfoNCELoss  # noqa: E402


def make_batch(queries: int, group: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(queries, dim, generator=g), dim=1).requires_grad_()
    d = F.normalize(torch.randn(queries * group, dim, generator=g), dim=1).requires_grad_()
    labels = torch.zeros(queries, queries * group, dtype=torch.long)
    rows = torch.arange(queries)[:, None]
    cols = rows * group + torch.arange(group)
    labels[rows, cols] = torch.randint(0, 6, (queries, group), generator=g)
    return q, d, labels


def naive_hinfonce(q: torch.Tensor, d: torch.Tensor, labels: torch.Tensor, t: float):
    """The formula anchor by anchor: sum over queries of L(q) (autograd graph kept)."""
    total = q.new_zeros(())
    for i in range(q.shape[0]):
        s = (q[i] @ d.T) / t
        row = labels[i]
        for a in (row >= 0).nonzero().flatten().tolist():
            lower = s[(row >= 0) & (row < row[a])]
            total = total + torch.logsumexp(torch.cat([s[a : a + 1], lower]), 0) - s[a]
    return total


def timed(fns: dict[str, Callable[[], torch.Tensor]], params, repeats: int, warmup: int):
    """(wall s, process CPU s) per forward + backward of each fn, interleaved repeat by repeat."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for k in range(warmup + repeats):
        for name, fn in fns.items():
            for p in params:
                p.grad = None
            w0, c0 = time.perf_counter(), time.process_time()
            fn().backward()
            if k >= warmup:
                times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--naive-queries", type=int, default=16)
    p.add_argument("--naive-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    q, d, labels = make_batch(args.queries, args.group, args.dim)
    b, n = labels.shape
    h_loss, nce_loss = HInfoNCELoss(), InfoNCELoss()
    sub = args.naive_queries
    q_sub = q[:sub].detach().clone().requires_grad_()
    # the loop computes the same value as H-InfoNCE on the subset (sum over its queries)
    check = naive_hinfonce(q_sub, d, labels[:sub], 0.05).item()
    fast = h_loss.per_query(q_sub, d, labels[:sub]).sum().item()
    assert abs(check - fast) <= 1e-4 * max(1.0, abs(check)), (check, fast)

    runs = timed(
        {"H-InfoNCE": lambda: h_loss(q, d, labels), "InfoNCE": lambda: nce_loss(q, d, labels)},
        [q, d],
        args.repeats,
        warmup=3,
    )
    scale = b / sub
    naive = timed(
        {"naive": lambda: naive_hinfonce(q_sub, d, labels[:sub], 0.05)},
        [q_sub, d],
        args.naive_repeats,
        warmup=1,
    )["naive"]
    runs["naive loop"] = [(w * scale, c * scale) for w, c in naive]
    wall = {name: statistics.median(w for w, _ in t) for name, t in runs.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in runs.items()}

    print(
        f"\n== forward + backward: {b} queries x {n} docs (group {args.group}), dim {args.dim}, "
        f"{args.threads} threads; medians of {args.repeats} (naive loop: {args.naive_repeats})"
    )
    print(f"{'loss':<14}{'wall ms':>12}{'min wall ms':>13}{'CPU ms':>12}")
    for name, t in runs.items():
        low = min(w for w, _ in t)
        print(f"{name:<14}{wall[name] * 1e3:>12.1f}{low * 1e3:>13.1f}{cpu[name] * 1e3:>12.1f}")
    print(
        f"naive loop: timed on the first {sub} queries ({wall['naive loop'] / scale * 1e3:.0f} ms "
        f"wall), scaled linearly x{scale:.0f} to the batch"
    )
    print("(CPU ms: process CPU time, both threads; steadier than wall time on a loaded machine)")

    def verdict(ok: bool) -> str:
        return "yes" if ok else "no"

    for unit, med in (("wall", wall), ("CPU", cpu)):
        ratio = med["H-InfoNCE"] / med["InfoNCE"]
        speedup = med["naive loop"] / med["H-InfoNCE"]
        print(
            f"{unit:>4}: H-InfoNCE / InfoNCE {ratio:.2f}x (goal <= 1.3: {verdict(ratio <= 1.3)}); "
            f"naive loop / H-InfoNCE {speedup:,.0f}x (goal >= 20x: {verdict(speedup >= 20)})"
        )


if __name__ == "__main__":
    main()
