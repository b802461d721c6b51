"""Collective pieces of a data-parallel step, shared by the dense loop (`crops.model.train`)
and the sparse hash-tower step (`crops.model.sparse`): gathering a batch's embeddings across
workers with the local gradient kept, the labels of the gathered batch, and the loss
parameters' gradient scale. torch is imported inside, so importing this module stays cheap.
"""

from __future__ import annotations


def gather(x, rank: int, world: int):
    """All-gather a (padded, equal-shape) tensor, keeping the autograd graph of the local one."""
    import torch
    import torch.distributed as dist

    if world == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


def pad_rows(x, n: int):
    """`x` with zero rows appended up to `n` (all-gather needs equal shapes)."""
    import torch

    if x.shape[0] == n:
        return x
    return torch.cat([x, x.new_zeros((n - x.shape[0], *x.shape[1:]))])


def global_labels(batch, world: int, q_pad: int, d_pad: int):
    """Labels of the gathered batch: rank r's queries are rows r*q_pad.., its docs columns
    r*d_pad..; real cells copy the batch's own labels, pads are -1."""
    import numpy as np

    q = np.arange(len(batch.queries))
    rows = (q % world) * q_pad + q // world  # query i is rank i % world's (i // world)-th
    shard = batch.owner % world  # a doc goes with its query, in batch order within the shard
    counts = np.bincount(shard, minlength=world)
    within = np.empty(len(shard), dtype=np.int64)
    order = np.argsort(shard, kind="stable")
    within[order] = np.arange(len(shard)) - np.repeat(np.cumsum(counts) - counts, counts)
    labels = np.full((world * q_pad, world * d_pad), -1, dtype=np.int64)
    labels[np.ix_(rows, shard * d_pad + within)] = batch.labels
    return labels


def sync_loss_grads(loss_fn, world: int) -> None:
    """The loss's own parameters (the learnable temperature) live outside DDP. Every worker
    computes the same full-batch loss, scaled by the world size for DDP's averaging, so their
    gradient is the same on every worker and `world` times too large: undo the scale."""
    for p in loss_fn.parameters():
        if p.grad is not None:
            p.grad.div_(world)


__all__ = ["gather", "global_labels", "pad_rows", "sync_loss_grads"]
