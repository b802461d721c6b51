"""Losses: H-InfoNCE against a naive per-anchor loop, its InfoNCE special case, and baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crops.model.losses import HInfoNCELoss, InfoNCELoss, SoftmaxCrossEntropyLoss


def naive_hinfonce(q: torch.Tensor, d: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """The formula, anchor by anchor, in float64: mean over queries with a pair of L(q)."""
    s = (q.double() @ d.double().T) / t
    per_query = []
    for i in range(labels.shape[0]):
        present = [j for j in range(labels.shape[1]) if labels[i, j] >= 0]
        if not present:
            continue  # a padding row
        loss_q = 0.0
        for a in present:
            denominator = [s[i, a]] + [s[i, k] for k in present if labels[i, k] < labels[i, a]]
            # -log(exp(s_a) / sum exp(s_j)), as a log-sum-exp so that large scores do not overflow
            loss_q += float(torch.logsumexp(torch.stack(denominator), 0) - s[i, a])
        per_query.append(loss_q)
    return sum(per_query) / len(per_query) if per_query else 0.0


def random_batch(seed: int, b: int = 5, n: int = 14, dim: int = 8, levels: int = 6, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, dim, generator=g), dim=1) * scale
    d = F.normalize(torch.randn(n, dim, generator=g), dim=1) * scale
    labels = torch.randint(-1, levels, (b, n), generator=g)
    return q, d, labels


@pytest.mark.parametrize("seed", range(6))
def test_hinfonce_matches_naive_loop(seed: int) -> None:
    q, d, labels = random_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    t = float(torch.empty(1).uniform_(0.02, 1.0, generator=g))
    if seed % 2:  # missing levels: only {0, 2, 5} occur
        labels = torch.tensor([-1, 0, 2, 5])[torch.randint(0, 4, labels.shape, generator=g)]
    if seed == 3:  # exact score ties: duplicated docs with different labels
        d = torch.cat([d[:7], d[:7]])
    if seed == 4:  # a padding query, a single-level query, a query of one doc
        labels[0] = -1
        labels[1] = torch.where(labels[1] >= 0, 3, -1)
        labels[2] = -1
        labels[2, 5] = 4
    loss = HInfoNCELoss(temperature=t)(q, d, labels)
    assert loss.item() == pytest.approx(naive_hinfonce(q, d, labels, t), abs=1e-5, rel=1e-5)


def test_hinfonce_batch_with_many_ties_and_in_batch_negatives() -> None:
    """Group structure of training: labels inside each query's group, 0 across groups."""
    g = torch.Generator().manual_seed(7)
    b, group = 4, 5
    q = F.normalize(torch.randn(b, 6, generator=g), dim=1)
    d = F.normalize(torch.randn(b * group, 6, generator=g), dim=1)
    d[1::2] = d[0::2]  # half the docs tie exactly with a neighbour
    labels = torch.zeros(b, b * group, dtype=torch.long)
    for i in range(b):
        labels[i, i * group : (i + 1) * group] = torch.randint(1, 6, (group,), generator=g)
    loss = HInfoNCELoss()(q, d, labels)
    assert loss.item() == pytest.approx(naive_hinfonce(q, d, labels, 0.05), rel=1e-5)


def test_single_level_gives_zero_loss_and_zero_gradient() -> None:
    q, d, labels = random_batch(1)
    for value in (0, 3, 5):
        single = torch.where(labels >= 0, value, -1)
        q_ = q.clone().requires_grad_()
        loss = HInfoNCELoss()(q_, d, single)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.count_nonzero(q_.grad) == 0


def test_lowest_present_level_contributes_nothing() -> None:
    q, d, labels = random_batch(2, b=4)
    loss_fn = HInfoNCELoss()
    base = loss_fn(q, d, labels)
    # a query whose docs are all at one (its lowest) level adds 0 to the sum over queries
    extra_q = torch.cat([q, F.normalize(torch.randn(1, q.shape[1]), dim=1)])
    extra_labels = torch.cat([labels, torch.full((1, labels.shape[1]), 2)])
    assert loss_fn(extra_q, d, extra_labels).item() * 5 == pytest.approx(base.item() * 4, rel=1e-6)
    # only the order of labels matters: relabel by a strictly increasing map
    squeezed = torch.tensor([1, 2, 3, 5, 7, 9, -1])[labels]  # 0..5 -> 1,2,3,5,7,9; -1 -> -1
    relabelled = HInfoNCELoss(max_label=9)(q, d, squeezed)
    assert relabelled.item() == pytest.approx(base.item(), rel=1e-6)
    # per row, the anchors at the lowest present level have a zero term: moving all of them to
    # an even lower level (or any level still below the rest) changes nothing
    lowered = labels.clone()
    for i in range(labels.shape[0]):
        row = labels[i]
        lowest = row[row >= 0].min()
        lowered[i] = torch.where(row == lowest, 0, row)
    assert loss_fn(q, d, lowered).item() == pytest.approx(base.item(), rel=1e-6)


@pytest.mark.parametrize("positive_min_label", [1, 4])
def test_reduces_to_infonce_on_binary_labels(positive_min_label: int) -> None:
    for seed in range(4):
        q, d, labels = random_batch(seed, b=6, n=20)
        binary = torch.where(labels >= 0, (labels >= positive_min_label) * positive_min_label, -1)
        h = HInfoNCELoss()(q, d, binary)
        nce = InfoNCELoss(positive_min_label=positive_min_label)(q, d, binary)
        assert h.item() == pytest.approx(nce.item(), abs=1e-6, rel=1e-6)
        # InfoNCE on graded labels is H-InfoNCE on the binarised ones
        graded = InfoNCELoss(positive_min_label=positive_min_label)(q, d, labels)
        assert graded.item() == pytest.approx(nce.item(), abs=1e-6, rel=1e-6)


def test_gradients_finite_for_extreme_scores() -> None:
    q, d, labels = random_batch(5, b=6, n=30, scale=100.0)  # |s / t| up to 2e5, float32
    labels[0, :] = 0
    labels[0, 3] = 5
    for loss_fn in (HInfoNCELoss(), InfoNCELoss(), SoftmaxCrossEntropyLoss()):
        q_, d_ = q.clone().requires_grad_(), d.clone().requires_grad_()
        loss = loss_fn(q_, d_, labels)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(q_.grad).all() and torch.isfinite(d_.grad).all()
        assert torch.isfinite(loss_fn.log_temperature.grad)
    # still exact at that range: per-level shifts do not underflow
    expected = naive_hinfonce(q, d, labels, 0.05)
    assert HInfoNCELoss()(q, d, labels).item() == pytest.approx(expected, rel=1e-4)


def test_gradients_match_autograd_of_naive_formula() -> None:
    q, d, labels = random_batch(11)
    q64, d64 = q.double().requires_grad_(), d.double().requires_grad_()
    s = (q64 @ d64.T) / 0.3
    total, rows = 0.0, 0
    for i in range(labels.shape[0]):
        present = (labels[i] >= 0).nonzero().flatten().tolist()
        rows += bool(present)
        for a in present:
            idx = [a] + [k for k in present if labels[i, k] < labels[i, a]]
            total = total + torch.logsumexp(s[i, idx], 0) - s[i, a]
    (total / rows).backward()
    q32, d32 = q.clone().requires_grad_(), d.clone().requires_grad_()
    HInfoNCELoss(temperature=0.3)(q32, d32, labels).backward()
    torch.testing.assert_close(q32.grad, q64.grad.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(d32.grad, d64.grad.float(), atol=1e-5, rtol=1e-4)


def test_temperature_learnable_or_fixed() -> None:
    q, d, labels = random_batch(3)
    learnable = HInfoNCELoss()
    assert learnable.temperature == pytest.approx(0.05)
    assert [n for n, _ in learnable.named_parameters()] == ["log_temperature"]
    learnable(q, d, labels).backward()
    assert learnable.log_temperature.grad is not None and learnable.log_temperature.grad != 0
    fixed = HInfoNCELoss(learnable_temperature=False)
    assert fixed.temperature == pytest.approx(0.05)
    assert list(fixed.parameters()) == []
    assert not fixed.log_temperature.requires_grad
    assert "log_temperature" in fixed.state_dict()
    # a step of the optimiser moves the learnable temperature
    opt = torch.optim.SGD(learnable.parameters(), lr=0.1)
    opt.step()
    assert learnable.temperature != pytest.approx(0.05)


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (HInfoNCELoss, {"temperature": 0.2, "learnable_temperature": False, "max_label": 3}),
        (InfoNCELoss, {"temperature": 0.1, "learnable_temperature": True, "positive_min_label": 2}),
        (SoftmaxCrossEntropyLoss, {"temperature": 0.07, "label_temperature": 0.5}),
    ],
)
def test_config_dict_round_trips(cls, kwargs) -> None:
    loss_fn = cls(**kwargs)
    config = loss_fn.get_config_dict()
    for key, value in kwargs.items():
        assert config[key] == pytest.approx(value)
    rebuilt = cls(**config)
    assert rebuilt.get_config_dict() == pytest.approx(config)
    q, d, labels = random_batch(4)
    labels = labels.clamp(max=3)
    assert rebuilt(q, d, labels).item() == pytest.approx(loss_fn(q, d, labels).item(), rel=1e-6)


def test_softmax_cross_entropy_prefers_the_right_order() -> None:
    dim, n = 6, 6
    q = F.normalize(torch.ones(1, dim), dim=1)
    labels = torch.tensor([[5, 4, 3, 2, 1, 0]])
    toward = torch.linspace(1.0, 0.0, n)  # cosine to q decreasing with the index
    d = torch.stack(
        [F.normalize(q[0] * c + torch.eye(dim)[k] * (1 - c), dim=0) for k, c in enumerate(toward)]
    )
    loss_fn = SoftmaxCrossEntropyLoss(temperature=0.1)
    perfect = loss_fn(q, d, labels)
    reversed_ = loss_fn(q, d, labels.flip(1))
    assert perfect < reversed_
    # H-InfoNCE agrees on the order
    assert HInfoNCELoss()(q, d, labels) < HInfoNCELoss()(q, d, labels.flip(1))
    # queries without a graded pair are left out; padding and a zero-only row change nothing
    q2 = torch.cat([q, q])
    labels2 = torch.cat([labels, torch.tensor([[0, 0, -1, 0, -1, -1]])])
    assert loss_fn(q2, d, labels2).item() == pytest.approx(perfect.item(), rel=1e-6)
    assert loss_fn(q, d, torch.zeros_like(labels)).item() == 0.0


def test_softmax_cross_entropy_matches_definition() -> None:
    q, d, labels = random_batch(9)
    labels[0] = torch.where(labels[0] > 0, 0, labels[0])  # no graded pair: left out
    loss = SoftmaxCrossEntropyLoss(temperature=0.5, label_temperature=2.0)(q, d, labels)
    s = q.double() @ d.double().T / 0.5
    ces = []
    for i in range(labels.shape[0]):
        keep = labels[i] >= 0
        if not (labels[i] > 0).any():
            continue
        target = torch.softmax(labels[i][keep].double() / 2.0, 0)
        ces.append(-(target * torch.log_softmax(s[i][keep], 0)).sum())
    assert loss.item() == pytest.approx(float(torch.stack(ces).mean()), rel=1e-5)


def test_invalid_inputs_raise_clear_errors() -> None:
    q, d, labels = random_batch(0)
    loss_fn = HInfoNCELoss()
    with pytest.raises(ValueError, match=r"labels must have shape \(B, N\) = \(5, 14\)"):
        loss_fn(q, d, labels[:, :-1])
    with pytest.raises(ValueError, match="embedding dimensions differ"):
        loss_fn(q, d[:, :-1], labels)
    with pytest.raises(ValueError, match="must be 2-D"):
        loss_fn(q[0], d, labels)
    with pytest.raises(ValueError, match="integer tensor"):
        loss_fn(q, d, labels.float())
    with pytest.raises(ValueError, match="integer tensor"):
        loss_fn(q, d, labels >= 0)
    with pytest.raises(ValueError, match="out of range: found min -1, max 6"):
        loss_fn(q, d, torch.where(labels == 5, 6, labels))
    with pytest.raises(ValueError, match="out of range: found min -2"):
        InfoNCELoss()(q, d, torch.where(labels == -1, -2, labels))
    with pytest.raises(ValueError, match="temperature must be"):
        HInfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="max_label"):
        HInfoNCELoss(max_label=0)


def test_empty_and_all_padding_batches_give_zero() -> None:
    q, d, labels = random_batch(0)
    q_ = q.clone().requires_grad_()
    for loss_fn in (HInfoNCELoss(), InfoNCELoss(), SoftmaxCrossEntropyLoss()):
        loss = loss_fn(q_, d, torch.full_like(labels, -1))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(q_.grad).all()
    assert math.isfinite(HInfoNCELoss()(q[:0], d, labels[:0]).item())
