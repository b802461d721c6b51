"""Contrastive losses over a batch of query and document embeddings: H-InfoNCE and baselines.

All three losses take the same inputs, in the style of sentence-transformers (one class per loss,
``forward`` over embeddings and labels, ``get_config_dict()``):

- ``query_emb`` (B, d) and ``doc_emb`` (N, d), used as given: the score of a pair is the dot
  product (the encoders L2-normalise), divided by the temperature t;
- ``labels`` (B, N), integer: the hierarchical label (0..max_label) of doc j for query i, with 0
  for the docs of the other queries in the batch (in-batch negatives), or -1 to ignore the pair
  entirely (padding). Only the order of the labels matters.

The temperature is a parameter, ``log t`` (so t stays positive), initialised at 0.05 and learned
with the encoders unless ``learnable_temperature=False`` (then it is a buffer: saved with the
state dict, never updated).

H-InfoNCE (CroPS, arXiv 2511.15443): each sample d_i of a query q is an anchor contrasted only with
the samples of strictly lower label::

    L(q) = - sum_i log( exp(s_i) / (exp(s_i) + sum_{k: l_k < l_i} exp(s_k)) ),   s = q.d / t

and the batch loss is the mean of L(q) over the queries that have at least one pair (rows that are
all -1 are padding and count for nothing). Anchors of the lowest label present in a row have
nothing below them, so their term is log 1 = 0.

How it is computed, for the whole batch in one pass (no loop over levels or samples, and nothing
larger than B x N: no B x N x N tensor). The denominator of anchor (i, j) only depends on its
label, so per row it is enough to know the mass of each level. Padding (-1) is sent to an extra
level L = max_label + 1 that lies below nothing and has nothing below it, so it needs no mask:

1. per row and level, the level's maximum score M_il (``scatter_reduce`` amax over the label
   values; detached, it is only a shift) and its shifted mass S_il = sum exp(s_ij - M_il)
   (``scatter_add``); log P_il = M_il + log S_il is the level's exact log-mass (-inf when empty);
2. an exclusive cumulative log-sum-exp over the levels (a B x (L + 1) x L strictly-lower mask;
   L = 6 by default) gives, per row and level, the log-mass of all strictly lower levels;
3. gathered back per anchor (B x N), the term is log(exp(s_ij) + lower_ij) - s_ij =
   softplus(log lower_ij - s_ij), which is exactly 0 when nothing lies below (-inf): the lowest
   level present and padding add nothing.

This is the row-max recipe (per-level sums of exp(s - rowmax) by ``scatter_add``, an exclusive
cumsum over levels, gathered back, log(exp(s_ij - m_i) + lower_ij) + m_i) with one refinement:
each level is shifted by its own maximum, in log space. With the row maximum, a level far below
the best score underflows to 0 in float32 (e.g. |s| ~ 1e4 / t); per-level shifts keep every
level's mass exact for any score range. Every ``log`` and ``exp`` sees guarded inputs, so empty
levels and padding give no inf or NaN gradient.
The extra work over plain InfoNCE is one scatter-reduce, one scatter-add and two gathers on B x N
(bench/bench_loss.py: about the same time for a 512 x 4,096 batch).

InfoNCE (NCE / DPR baselines) is the same loss on binarised labels: labels >= positive_min_label
are positives, the other pairs (>= 0) negatives, each positive contrasted with itself and all
negatives of its query (not with the other positives). SoftmaxCrossEntropyLoss is listwise: per
query, the cross-entropy of softmax(s) against a target distribution softmax(label / tau) over its
pairs, averaged over the queries with a graded (label > 0) pair.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HInfoNCELoss", "InfoNCELoss", "SoftmaxCrossEntropyLoss"]

IGNORE = -1
"""Label of a (query, doc) pair that takes no part in the loss (padding)."""


def _validate(query_emb: Tensor, doc_emb: Tensor, labels: Tensor, max_label: int | None) -> Tensor:
    """Check shapes, dtype and range; return the labels as int64."""
    if query_emb.dim() != 2 or doc_emb.dim() != 2:
        raise ValueError(
            f"query_emb and doc_emb must be 2-D (B, d) and (N, d); got shapes "
            f"{tuple(query_emb.shape)} and {tuple(doc_emb.shape)}"
        )
    if query_emb.shape[1] != doc_emb.shape[1]:
        raise ValueError(
            f"embedding dimensions differ: query_emb {tuple(query_emb.shape)}, "
            f"doc_emb {tuple(doc_emb.shape)}"
        )
    expected = (query_emb.shape[0], doc_emb.shape[0])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels must have shape (B, N) = {expected} for query_emb {tuple(query_emb.shape)} "
            f"and doc_emb {tuple(doc_emb.shape)}; got {tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be an integer tensor; got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < IGNORE or (max_label is not None and hi > max_label):
            allowed = "0.." + ("" if max_label is None else str(max_label))
            raise ValueError(
                f"labels out of range: found min {lo}, max {hi}; allowed are -1 (ignore the pair) "
                f"and {allowed}"
            )
    return labels


class _TemperatureMixin(nn.Module):
    """A temperature t = exp(log_t): a parameter when learnable, a buffer otherwise."""

    def _init_temperature(self, temperature: float, learnable: bool) -> None:
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a positive finite number; got {temperature}")
        self.learnable_temperature = bool(learnable)
        log_t = torch.tensor(math.log(temperature), dtype=torch.float32)
        if self.learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def temperature(self) -> float:
        """The current temperature t (learned value when learnable)."""
        return float(self.log_temperature.detach().exp())

    def _scores(self, query_emb: Tensor, doc_emb: Tensor) -> Tensor:
        """s = q . d / t, in float32 at least (B, N)."""
        inv_t = torch.exp(-self.log_temperature)
        if query_emb.dtype in (torch.float16, torch.bfloat16):  # score in float32 at least
            query_emb, doc_emb = query_emb.float(), doc_emb.float()
        return (query_emb * inv_t.to(query_emb.dtype)) @ doc_emb.T  # 1/t on B x d, not B x N


def _safe_log_mass(mass: Tensor, shift: Tensor) -> Tensor:
    """log(mass) + shift, -inf where mass == 0, with finite gradients everywhere."""
    nonzero = mass > 0
    return torch.where(nonzero, torch.log(torch.where(nonzero, mass, 1.0)) + shift, -math.inf)


def _masked_max(x: Tensor, dim: int) -> Tensor:
    """Detached max over `dim` (entries -inf where masked), 0 where everything is masked."""
    m = x.detach().amax(dim=dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, 0.0)


def _mean_over_rows(per_query: Tensor, rows: Tensor) -> Tensor:
    """Mean of per-query losses over the rows that count; 0 (with a graph) when none does."""
    n = rows.sum()
    return (per_query * rows).sum() / n.clamp(min=1)


class _PerQueryLoss(_TemperatureMixin):
    """Losses defined per query row: the batch loss is their mean over real (unpadded) rows."""

    def per_query(self, query_emb: Tensor, doc_emb: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, query_emb: Tensor, doc_emb: Tensor, labels: Tensor) -> Tensor:
        """Mean of L(q) over the queries with at least one non-ignored pair (a scalar)."""
        per_query = self.per_query(query_emb, doc_emb, labels)
        return _mean_over_rows(per_query, (labels >= 0).any(dim=1))


class HInfoNCELoss(_PerQueryLoss):
    """Hierarchical InfoNCE (H-InfoNCE): each sample is contrasted with those of lower label.

    Args:
        temperature: initial temperature t (scores are q.d / t); the paper uses 0.05.
        learnable_temperature: learn t with the model (as log t) or keep it fixed.
        max_label: the highest label; labels are -1 (ignore) or 0..max_label.
    """

    def __init__(
        self, temperature: float = 0.05, learnable_temperature: bool = True, max_label: int = 5
    ) -> None:
        super().__init__()
        if max_label < 1:
            raise ValueError(f"max_label must be >= 1 (at least two levels); got {max_label}")
        self.max_label = int(max_label)
        self._init_temperature(temperature, learnable_temperature)
        levels = self.max_label + 1
        # strictly_lower[l, k] = k < l: the levels an anchor of level l is contrasted with; the
        # extra last row is the padding level, contrasted with nothing
        lower = torch.ones(levels + 1, levels, dtype=torch.bool).tril(diagonal=-1)
        lower[levels] = False
        self.register_buffer("_strictly_lower", lower, persistent=False)

    def per_query(self, query_emb: Tensor, doc_emb: Tensor, labels: Tensor) -> Tensor:
        """L(q) for every query row (B,), before the mean; 0 for rows without pairs."""
        labels = _validate(query_emb, doc_emb, labels, self.max_label)
        s = self._scores(query_emb, doc_emb)
        b, levels = s.shape[0], self.max_label + 1
        # padding goes to an extra column `levels`: never below anything, nothing below it
        level = torch.where(labels < 0, levels, labels)

        # 1. per (row, level): max score (a detached shift) and log of the level's mass
        lvl_max = torch.full((b, levels + 1), -math.inf, dtype=s.dtype, device=s.device)
        lvl_max = lvl_max.scatter_reduce(1, level, s.detach(), "amax", include_self=True)
        lvl_shift = torch.where(torch.isfinite(lvl_max), lvl_max, 0.0)
        e = torch.exp(s - lvl_shift.gather(1, level))  # in (0, 1], exactly 1 at each level's max
        mass = torch.zeros_like(lvl_max).scatter_add(1, level, e)
        log_mass = _safe_log_mass(mass[:, :levels], lvl_shift[:, :levels])  # -inf when empty

        # 2. exclusive cumulative log-sum-exp over levels: log-mass strictly below each level
        strictly_lower = self._strictly_lower.to(s.device)  # (L + 1, L), row L all False
        below = log_mass[:, None, :].expand(b, levels + 1, levels)  # below[i, l, k] = log P_ik
        below = below.masked_fill(~strictly_lower, -math.inf)  # keep k < l
        below_shift = _masked_max(below, dim=2)
        below_mass = torch.exp(below - below_shift).sum(dim=2)
        log_below = _safe_log_mass(below_mass, below_shift.squeeze(2))  # (B, L + 1)

        # 3. per anchor: log(exp(s) + lower) - s = softplus(log lower - s), exactly 0 when
        # nothing lies below (the lowest level present, and padding)
        return F.softplus(log_below.gather(1, level) - s).sum(dim=1)

    def get_config_dict(self) -> dict[str, Any]:
        """Constructor arguments (temperature: the current value) for logging and rebuilding."""
        return {
            "temperature": self.temperature,
            "learnable_temperature": self.learnable_temperature,
            "max_label": self.max_label,
        }


class InfoNCELoss(_PerQueryLoss):
    """Binary InfoNCE (NCE / DPR baselines): every positive against all negatives of its query.

    Labels >= positive_min_label are positives, other labels >= 0 negatives, -1 ignored. Each
    positive is contrasted with itself and the query's negatives (other positives excluded);
    the loss is the mean over queries (with any pair) of the sum over positives, which is
    H-InfoNCE on the binarised labels.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learnable_temperature: bool = True,
        positive_min_label: int = 4,
    ) -> None:
        super().__init__()
        if positive_min_label < 1:
            raise ValueError(f"positive_min_label must be >= 1; got {positive_min_label}")
        self.positive_min_label = int(positive_min_label)
        self._init_temperature(temperature, learnable_temperature)

    def per_query(self, query_emb: Tensor, doc_emb: Tensor, labels: Tensor) -> Tensor:
        """Loss of every query row (B,), before the mean; 0 for rows without positives."""
        labels = _validate(query_emb, doc_emb, labels, None)
        s = self._scores(query_emb, doc_emb)
        positive = labels >= self.positive_min_label
        negative = (labels >= 0) & ~positive
        s_neg = s.masked_fill(~negative, -math.inf)
        shift = _masked_max(s_neg, dim=1)
        log_neg = _safe_log_mass(torch.exp(s_neg - shift).sum(dim=1), shift.squeeze(1))  # (B,)
        terms = torch.where(positive, F.softplus(log_neg[:, None] - s), 0.0)
        return terms.sum(dim=1)

    def get_config_dict(self) -> dict[str, Any]:
        """Constructor arguments (temperature: the current value) for logging and rebuilding."""
        return {
            "temperature": self.temperature,
            "learnable_temperature": self.learnable_temperature,
            "positive_min_label": self.positive_min_label,
        }


class SoftmaxCrossEntropyLoss(_TemperatureMixin):
    """Listwise softmax cross-entropy against the graded labels.

    Per query, over its non-ignored pairs: target p = softmax(label / label_temperature),
    prediction softmax(s), loss = -sum p log softmax(s). Averaged over the queries that have a
    graded pair (label > 0); queries with only label 0 would have a uniform target and are left out.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learnable_temperature: bool = True,
        label_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not (label_temperature > 0 and math.isfinite(label_temperature)):
            raise ValueError(
                f"label_temperature must be positive and finite; got {label_temperature}"
            )
        self.label_temperature = float(label_temperature)
        self._init_temperature(temperature, learnable_temperature)

    def forward(self, query_emb: Tensor, doc_emb: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy over the queries with a label > 0 (a scalar; 0 when none)."""
        labels = _validate(query_emb, doc_emb, labels, None)
        s = self._scores(query_emb, doc_emb)
        valid = labels >= 0
        rows = (labels > 0).any(dim=1)
        counted = rows[:, None]
        # rows left out get finite stand-ins (label 0, raw scores) so nothing becomes NaN
        target_logits = torch.where(valid, labels.to(s.dtype) / self.label_temperature, -math.inf)
        target = torch.softmax(torch.where(counted, target_logits, 0.0), dim=1)
        log_pred = torch.log_softmax(torch.where(valid | ~counted, s, -math.inf), dim=1)
        ce = -(target * torch.where(target > 0, log_pred, 0.0)).sum(dim=1)
        return _mean_over_rows(ce, rows)

    def get_config_dict(self) -> dict[str, Any]:
        """Constructor arguments (temperature: the current value) for logging and rebuilding."""
        return {
            "temperature": self.temperature,
            "learnable_temperature": self.learnable_temperature,
            "label_temperature": self.label_temperature,
        }
