"""Objectives against naive references written with plain loops straight from the formulas.

Every implementation casts to float32; the references run in float64 on the same leaf tensor,
so values and gradients are compared at float32 tolerance.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from clt.methods import ViewOutputs
from clt.objectives.mining import TRIPLET_MINERS, squared_distances
from clt.registry import OBJECTIVES
from clt.train import COLLAPSE_STD, embedding_rank, embedding_spread, is_collapsing

VALUE_TOL = {"rtol": 1e-5, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}

# ---------------------------------------------------------------- helpers


def leaf(rows: int, dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g, dtype=dtype).requires_grad_()


def random_labels(n: int, classes: int, seed: int) -> list[int]:
    """n labels over `classes` classes, every class present at least twice when n allows."""
    g = torch.Generator().manual_seed(seed + 1000)
    base = [c % classes for c in range(n)]
    return [base[k] for k in torch.randperm(n, generator=g).tolist()]


def value_and_grad(loss: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach().double(), grad.double()


def assert_same_loss(impl_fn, ref_fn, x: torch.Tensor) -> None:
    """Both callables take the leaf x; values and d/dx must agree."""
    impl_value, impl_grad = value_and_grad(impl_fn(x), x)
    ref_value, ref_grad = value_and_grad(ref_fn(x), x)
    torch.testing.assert_close(impl_value, ref_value, **VALUE_TOL)
    torch.testing.assert_close(impl_grad, ref_grad, **GRAD_TOL)


def params_of(name: str, **kw):
    return OBJECTIVES[name].params(**kw)


def loss_of(name: str):
    return OBJECTIVES[name].loss


def mean_of(terms: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(terms).mean() if terms else like.sum() * 0


def normalized(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([row / row.norm() for row in x])


def sqdist(z: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return ((z[i] - z[j]) ** 2).sum()


def cos(z: torch.Tensor, i: int, j: int) -> torch.Tensor:
    return (z[i] * z[j]).sum() / (z[i].norm() * z[j].norm())


# ---------------------------------------------------------------- naive references


def ref_balanced(same: list[torch.Tensor], diff: list[torch.Tensor], balance: bool, like) -> torch.Tensor:
    if not balance:
        return mean_of(same + diff, like)
    means = [torch.stack(group).mean() for group in (same, diff) if group]
    return sum(means) / len(means) if means else like.sum() * 0


def ref_pair(x: torch.Tensor, labels: list[int], margin: float, balance: bool,
             hinge: str = "squared_distance") -> torch.Tensor:
    same, diff = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            predicted = ((x[i] - x[j]) ** 2).mean()
            t = 0.0 if labels[i] == labels[j] else 1.0
            if hinge == "distance":  # Hadsell, Chopra, LeCun 2006, eq. 4
                push = torch.clamp(margin - predicted.sqrt(), min=0) ** 2
            else:
                push = torch.clamp(margin - predicted, min=0)
            loss = (1 - t) * predicted + t * push
            (same if t == 0 else diff).append(loss)
    return ref_balanced(same, diff, balance, x)


def ref_cosine_pair(x: torch.Tensor, labels: list[int], balance: bool) -> torch.Tensor:
    same, diff = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            target = 1.0 if labels[i] == labels[j] else 0.0
            loss = (cos(x, i, j) - target) ** 2
            (same if target == 1.0 else diff).append(loss)
    return ref_balanced(same, diff, balance, x)


def ref_triplet_batch_all(x, labels, margin, normalize) -> torch.Tensor:
    z = normalized(x) if normalize else x
    b = len(labels)
    losses = []
    for a, p, n in itertools.product(range(b), repeat=3):
        if a != p and labels[a] == labels[p] and labels[n] != labels[a]:
            loss = torch.clamp(sqdist(z, a, p) - sqdist(z, a, n) + margin, min=0)
            if loss.item() > 0:
                losses.append(loss)
    return mean_of(losses, x)


def ref_triplet_batch_hard(x, labels, margin, normalize) -> torch.Tensor:
    z = normalized(x) if normalize else x
    b = len(labels)
    losses = []
    for a in range(b):
        positives = [p for p in range(b) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(b) if labels[n] != labels[a]]
        if not positives or not negatives:
            continue
        hardest_p = max(positives, key=lambda p: sqdist(z, a, p).item())
        hardest_n = min(negatives, key=lambda n: sqdist(z, a, n).item())
        losses.append(torch.clamp(sqdist(z, a, hardest_p) - sqdist(z, a, hardest_n) + margin, min=0))
    return mean_of(losses, x)


def ref_triplet_semi_hard(x, labels, margin, normalize) -> tuple[torch.Tensor, int]:
    z = normalized(x) if normalize else x
    b = len(labels)
    losses = []
    for a, p in itertools.product(range(b), repeat=2):
        if a == p or labels[a] != labels[p]:
            continue
        dap = sqdist(z, a, p)
        semi = [n for n in range(b) if labels[n] != labels[a]
                and dap.item() < sqdist(z, a, n).item() < dap.item() + margin]
        if not semi:
            continue
        n = min(semi, key=lambda n: sqdist(z, a, n).item())
        losses.append(torch.clamp(dap - sqdist(z, a, n) + margin, min=0))
    return mean_of(losses, x), len(losses)


def ref_triplet_given(x, triplets, margin, normalize) -> torch.Tensor:
    z = normalized(x) if normalize else x
    losses = [torch.clamp(sqdist(z, a, p) - sqdist(z, a, n) + margin, min=0) for a, p, n in triplets]
    return mean_of(losses, x)


def ref_ntxent(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR eq. 1, averaged over all 2N anchors; positive of i is (i + N) mod 2N."""
    m = x.shape[0]
    n = m // 2
    total = 0
    for i in range(m):
        j = (i + n) % m
        denominator = sum(torch.exp(cos(x, i, k) / temperature) for k in range(m) if k != i)
        total = total - torch.log(torch.exp(cos(x, i, j) / temperature) / denominator)
    return total / m


def ref_supcon(x: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """Khosla et al. L_out, averaged over anchors that have at least one positive."""
    m = x.shape[0]
    per_anchor = []
    for i in range(m):
        positives = [p for p in range(m) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(cos(x, i, a) / temperature) for a in range(m) if a != i)
        terms = [torch.log(torch.exp(cos(x, i, p) / temperature) / denominator) for p in positives]
        per_anchor.append(-sum(terms) / len(positives))
    return mean_of(per_anchor, x)


def two_views(n: int, dim: int, seed: int) -> torch.Tensor:
    return leaf(2 * n, dim, seed)


# ---------------------------------------------------------------- pair


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("balance", [False, True])
@pytest.mark.parametrize("margin", [1.0, 3.0])
@pytest.mark.parametrize("hinge", ["squared_distance", "distance"])
def test_pair_matches_reference(seed, balance, margin, hinge):
    labels = random_labels(9, 3, seed)
    x = leaf(9, 4, seed)
    params = params_of("pair", margin=margin, balance=balance, hinge=hinge)
    assert_same_loss(lambda e: loss_of("pair")(e, torch.tensor(labels), params),
                     lambda e: ref_pair(e, labels, margin, balance, hinge), x)


def test_pair_distance_hinge_keeps_pushing_different_class_pairs_that_start_close():
    """The squared-distance hinge's push, 2(a - b), fades as a different-class pair meets; the
    distance hinge's does not: the gradient on a pair 1e-3 apart differs by orders of magnitude."""
    labels = torch.tensor([0, 1])
    x = torch.zeros(2, 8)
    x[1, 0] = 1e-3
    grads = {}
    for hinge in ("squared_distance", "distance"):
        leaf_x = x.clone().requires_grad_()
        loss_of("pair")(leaf_x, labels, params_of("pair", hinge=hinge)).backward()
        grads[hinge] = leaf_x.grad.norm().item()
    assert grads["distance"] > 100 * grads["squared_distance"] > 0


@pytest.mark.parametrize("hinge", ["squared_distance", "distance"])
def test_pair_verify_splits_at_half_the_margin_in_the_units_the_hinge_bounds(hinge):
    """Embeddings v apart in every coordinate are a squared distance v² apart: with margin 1 the
    squared-distance form calls them the same class below v² = 0.5, the distance form below v = 0.5."""
    params = params_of("pair", hinge=hinge)
    verify, zero = OBJECTIVES["pair"].verify, torch.zeros(1, 4)
    same = {v: bool(verify(zero, torch.full((1, 4), v), params)) for v in (0.45, 0.6, 0.8)}
    assert same == {0.45: True, 0.6: hinge == "squared_distance", 0.8: False}


def test_pair_reference_exercises_both_sides_of_the_margin():
    labels = random_labels(9, 3, 0)
    x = leaf(9, 4, 0).detach()
    predicted = [((x[i] - x[j]) ** 2).mean().item() for i in range(9) for j in range(i + 1, 9)
                 if labels[i] != labels[j]]
    assert min(predicted) < 1.0 < max(predicted)


def test_pair_in_float32_matches_the_float64_loop_when_same_class_embeddings_nearly_coincide():
    # the loss is taken from the (B, B) distance matrix |a|² + |b|² − 2a·b, which cancels when two
    # embeddings of large norm almost coincide: the late-training state of same-class pairs
    labels = [0, 0, 1, 1, 2, 2]
    base = torch.relu(torch.randn(3, 128, generator=torch.Generator().manual_seed(0))) * 4
    near = base.repeat_interleave(2, 0) + 1e-3 * torch.randn(6, 128, generator=torch.Generator().manual_seed(1))
    x32, x64 = near.clone().requires_grad_(), near.double().requires_grad_()
    value, grad = value_and_grad(loss_of("pair")(x32, torch.tensor(labels), params_of("pair")), x32)
    ref_value, ref_grad = value_and_grad(ref_pair(x64, labels, 1.0, True), x64)
    assert float(ref_value) > 0  # the different-class pairs sit inside the margin: both terms count
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]])
def test_pair_single_group_batches_are_finite(labels):
    x = leaf(4, 3, 7)
    params = params_of("pair")
    assert_same_loss(lambda e: loss_of("pair")(e, torch.tensor(labels), params),
                     lambda e: ref_pair(e, labels, params.margin, params.balance), x)


# ---------------------------------------------------------------- cosine_pair


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("balance", [False, True])
def test_cosine_pair_matches_reference(seed, balance):
    labels = random_labels(8, 3, seed)
    x = leaf(8, 5, seed)
    params = params_of("cosine_pair", balance=balance)
    assert_same_loss(lambda e: loss_of("cosine_pair")(e, torch.tensor(labels), params),
                     lambda e: ref_cosine_pair(e, labels, balance), x)


def test_cosine_pair_is_scale_invariant():
    labels = torch.tensor(random_labels(8, 3, 0))
    x = leaf(8, 5, 0).detach()
    params = params_of("cosine_pair")
    loss = loss_of("cosine_pair")
    torch.testing.assert_close(loss(x, labels, params), loss(x * 17.0, labels, params))


# ---------------------------------------------------------------- triplet


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalize,margin", [(True, 0.2), (True, 1.0), (False, 1.0)])
def test_triplet_batch_all_matches_reference(seed, normalize, margin):
    labels = random_labels(8, 3, seed)
    x = leaf(8, 3, seed)
    params = params_of("triplet", margin=margin, mining="batch_all", normalize=normalize)
    assert_same_loss(lambda e: loss_of("triplet")(e, torch.tensor(labels), params),
                     lambda e: ref_triplet_batch_all(e, labels, margin, normalize), x)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalize,margin", [(True, 0.2), (True, 1.0), (False, 1.0)])
def test_triplet_batch_hard_matches_reference(seed, normalize, margin):
    labels = random_labels(9, 3, seed)
    x = leaf(9, 3, seed)
    params = params_of("triplet", margin=margin, mining="batch_hard", normalize=normalize)
    assert_same_loss(lambda e: loss_of("triplet")(e, torch.tensor(labels), params),
                     lambda e: ref_triplet_batch_hard(e, labels, margin, normalize), x)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalize,margin", [(True, 0.2), (True, 0.5), (False, 2.0)])
def test_triplet_semi_hard_matches_reference(seed, normalize, margin):
    labels = random_labels(10, 3, seed)
    x = leaf(10, 3, seed)
    _, found = ref_triplet_semi_hard(x.detach(), labels, margin, normalize)
    assert found > 0, "the batch should offer semi-hard triplets"
    params = params_of("triplet", margin=margin, mining="semi_hard", normalize=normalize)
    assert_same_loss(lambda e: loss_of("triplet")(e, torch.tensor(labels), params),
                     lambda e: ref_triplet_semi_hard(e, labels, margin, normalize)[0], x)


@pytest.mark.parametrize("normalize", [True, False])
def test_triplet_random_matches_reference_on_the_mined_triplets(normalize):
    labels = random_labels(9, 3, 4)
    x = leaf(9, 3, 4)
    params = params_of("triplet", margin=0.5, mining="random", normalize=normalize)
    a, p, n = TRIPLET_MINERS["random"](torch.tensor(labels), torch.Generator().manual_seed(5))
    triplets = list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    assert_same_loss(
        lambda e: loss_of("triplet")(e, torch.tensor(labels), params, torch.Generator().manual_seed(5)),
        lambda e: ref_triplet_given(e, triplets, 0.5, normalize), x)


@pytest.mark.parametrize("mining", sorted(TRIPLET_MINERS))
@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 1, 2, 3]])
def test_triplet_without_valid_triplets_is_zero_and_finite(mining, labels):
    x = leaf(4, 3, 0)
    loss = loss_of("triplet")(x, torch.tensor(labels), params_of("triplet", mining=mining))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0
    assert torch.isfinite(grad).all()


def test_triplet_batch_all_with_separated_classes_is_zero():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)
    loss = loss_of("triplet")(x, torch.tensor([0, 0, 1, 1]), params_of("triplet", mining="batch_all"))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0
    assert torch.isfinite(grad).all()


def test_triplet_batch_all_is_batch_order_invariant():
    labels = torch.tensor(random_labels(8, 3, 2))
    x = leaf(8, 3, 2).detach()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    params = params_of("triplet")
    loss = loss_of("triplet")
    torch.testing.assert_close(loss(x, labels, params), loss(x[perm], labels[perm], params))


# ---------------------------------------------------------------- miners, against exhaustive search

MINER_LABELS = [0, 0, 0, 1, 1, 2, 3, 3, 3, 0]  # class 2 is a singleton: never an anchor


def miner_dist(seed: int) -> torch.Tensor:
    x = leaf(len(MINER_LABELS), 3, seed).detach()
    return squared_distances(torch.nn.functional.normalize(x, dim=1))


def valid_anchors(labels: list[int]) -> list[int]:
    b = len(labels)
    return [a for a in range(b)
            if any(p != a and labels[p] == labels[a] for p in range(b))
            and any(labels[n] != labels[a] for n in range(b))]


def test_squared_distances_matches_pairwise_loop():
    x = leaf(6, 4, 0).detach()
    dist = squared_distances(x)
    expected = torch.tensor([[sqdist(x, i, j).item() for j in range(6)] for i in range(6)], dtype=x.dtype)
    torch.testing.assert_close(dist, expected)
    assert (dist.diagonal() == 0).all()


def test_all_triplets_is_every_valid_triplet():
    labels = MINER_LABELS
    a, p, n = TRIPLET_MINERS["batch_all"](torch.tensor(labels), None, miner_dist(0), 0.2)
    got = set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    b = len(labels)
    expected = {(a, p, n) for a, p, n in itertools.product(range(b), repeat=3)
                if a != p and labels[a] == labels[p] and labels[n] != labels[a]}
    assert got == expected
    assert len(a) == len(expected)


@pytest.mark.parametrize("seed", range(4))
def test_hardest_triplets_are_argmax_positive_and_argmin_negative(seed):
    labels = MINER_LABELS
    dist = miner_dist(seed)
    a, p, n = TRIPLET_MINERS["batch_hard"](torch.tensor(labels), None, dist, 0.2)
    b = len(labels)
    expected = []
    for anchor in valid_anchors(labels):
        positives = [q for q in range(b) if q != anchor and labels[q] == labels[anchor]]
        negatives = [q for q in range(b) if labels[q] != labels[anchor]]
        expected.append((anchor, max(positives, key=lambda q: dist[anchor, q].item()),
                         min(negatives, key=lambda q: dist[anchor, q].item())))
    assert list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == expected


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", [0.2, 0.5, 1.0])
def test_semi_hard_triplets_match_exhaustive_search(seed, margin):
    labels = MINER_LABELS
    dist = miner_dist(seed)
    a, p, n = TRIPLET_MINERS["semi_hard"](torch.tensor(labels), None, dist, margin)
    b = len(labels)
    expected = set()
    for anchor, positive in itertools.product(range(b), repeat=2):
        if anchor == positive or labels[anchor] != labels[positive]:
            continue
        dap = dist[anchor, positive].item()
        semi = [q for q in range(b)
                if labels[q] != labels[anchor] and dap < dist[anchor, q].item() < dap + margin]
        if semi:
            expected.add((anchor, positive, min(semi, key=lambda q: dist[anchor, q].item())))
    got = list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == expected


def test_random_triplets_are_valid_one_per_anchor_and_seeded():
    labels = MINER_LABELS
    t = torch.tensor(labels)
    seen_positives: dict[int, set[int]] = {}
    for seed in range(30):
        a, p, n = TRIPLET_MINERS["random"](t, torch.Generator().manual_seed(seed))
        assert a.tolist() == valid_anchors(labels)
        for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
            assert anchor != positive
            assert labels[positive] == labels[anchor]
            assert labels[negative] != labels[anchor]
            seen_positives.setdefault(anchor, set()).add(positive)
        again = TRIPLET_MINERS["random"](t, torch.Generator().manual_seed(seed))
        assert all(torch.equal(u, v) for u, v in zip((a, p, n), again, strict=True))
    # class 0 anchors have three positives each: random picks should reach more than one
    assert all(len(seen_positives[anchor]) > 1 for anchor in (0, 1, 2, 9))


# ---------------------------------------------------------------- simclr (NT-Xent)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_simclr_matches_reference(seed, temperature):
    x = two_views(5, 4, seed)
    labels = torch.arange(5).repeat(2)
    params = params_of("simclr", temperature=temperature)
    assert_same_loss(lambda e: loss_of("simclr")(e, labels, params), lambda e: ref_ntxent(e, temperature), x)


def test_simclr_is_invariant_to_permuting_images():
    n = 6
    x = two_views(n, 4, 3).detach()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    permuted = torch.cat([x[:n][perm], x[n:][perm]])
    params = params_of("simclr")
    loss = loss_of("simclr")
    labels = torch.arange(n).repeat(2)
    torch.testing.assert_close(loss(x, labels, params), loss(permuted, labels, params))


def test_simclr_pairs_view_one_of_image_i_with_view_two_of_image_i():
    """Permuting only the second view's images breaks the pairing and changes the loss."""
    n = 6
    x = two_views(n, 4, 3).detach()
    shifted = torch.cat([x[:n], x[n:].roll(1, dims=0)])
    params = params_of("simclr")
    labels = torch.arange(n).repeat(2)
    loss = loss_of("simclr")
    assert abs(loss(x, labels, params).item() - loss(shifted, labels, params).item()) > 1e-3


@pytest.mark.parametrize("scale", [1e-3, 0.5, 40.0])
def test_simclr_is_scale_invariant(scale):
    x = two_views(5, 4, 0).detach()
    params = params_of("simclr")
    labels = torch.arange(5).repeat(2)
    loss = loss_of("simclr")
    torch.testing.assert_close(loss(x, labels, params), loss(x * scale, labels, params))


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_simclr_analytic_value_has_2n_minus_2_negatives(n, temperature):
    """Identical views, images mutually orthogonal: every anchor sees cos 1 with its positive and
    cos 0 with the 2N-2 others, so loss = log(e^{1/τ} + 2N-2) - 1/τ = log(1 + (2N-2) e^{-1/τ})."""
    images = torch.eye(n, dtype=torch.float64) * 3.0
    x = torch.cat([images, images])
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / temperature))
    got = loss_of("simclr")(x, torch.arange(n).repeat(2), params_of("simclr", temperature=temperature))
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_simclr_ignores_labels():
    x = two_views(4, 3, 0).detach()
    params = params_of("simclr")
    a = loss_of("simclr")(x, torch.arange(4).repeat(2), params)
    b = loss_of("simclr")(x, torch.zeros(8, dtype=torch.long), params)
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- supcon


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_reference_two_views(seed, temperature):
    image_labels = random_labels(5, 3, seed)
    labels = image_labels + image_labels  # labels.repeat(2)
    x = two_views(5, 4, seed)
    params = params_of("supcon", temperature=temperature)
    assert_same_loss(lambda e: loss_of("supcon")(e, torch.tensor(labels), params),
                     lambda e: ref_supcon(e, labels, temperature), x)


def test_supcon_skips_anchors_without_positives():
    labels = [0, 0, 0, 1, 2, 3]  # anchors 3, 4, 5 have no positive
    x = leaf(6, 4, 0)
    params = params_of("supcon")
    impl = loss_of("supcon")(x, torch.tensor(labels), params)
    (grad,) = torch.autograd.grad(impl, x)
    assert torch.isfinite(impl) and torch.isfinite(grad).all()
    assert_same_loss(lambda e: loss_of("supcon")(e, torch.tensor(labels), params),
                     lambda e: ref_supcon(e, labels, params.temperature), x)


@pytest.mark.parametrize("m", [1, 2, 6])
def test_supcon_all_distinct_single_view_is_zero_and_finite(m):
    x = leaf(m, 4, 0)
    loss = loss_of("supcon")(x, torch.arange(m), params_of("supcon"))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.ndim == 0 and loss.item() == 0.0
    assert torch.isfinite(grad).all()


def test_supcon_is_batch_order_invariant():
    image_labels = torch.tensor(random_labels(6, 3, 1))
    labels = image_labels.repeat(2)
    x = two_views(6, 4, 1).detach()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    params = params_of("supcon")
    torch.testing.assert_close(loss_of("supcon")(x, labels, params),
                               loss_of("supcon")(x[perm], labels[perm], params))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_with_distinct_images_equals_simclr(temperature):
    """Every image its own class: the only positive is the other view, which is NT-Xent."""
    n = 5
    x = two_views(n, 4, 2).detach()
    labels = torch.arange(n).repeat(2)
    torch.testing.assert_close(loss_of("supcon")(x, labels, params_of("supcon", temperature=temperature)),
                               loss_of("simclr")(x, labels, params_of("simclr", temperature=temperature)))


# ---------------------------------------------------------------- every registered objective


@pytest.mark.parametrize("name", OBJECTIVES.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_every_objective_gives_finite_loss_and_gradients(name, dtype):
    entry = OBJECTIVES[name]
    params = entry.params()
    check = getattr(params, "check", None)
    assert check is None or check() is None, "default params must be valid"
    n = 8
    image_labels = torch.arange(n) % 3  # three classes, every class at least twice
    labels = image_labels.repeat(entry.views)
    x = leaf(n * entry.views, 16, 0, dtype=dtype)
    # view objectives: the gradient reaches the projections through z, or through the predictor p
    trained = leaf(n * entry.views, 16, 3, dtype=dtype) if entry.predictor else x

    def loss_at(lab):
        if not entry.reads_views:
            return entry.loss(x, lab, params)
        out = ViewOutputs(x, lab, p=trained if entry.predictor else None,
                          target=leaf(n * entry.views, 16, 1, dtype=dtype).detach() if entry.target else None,
                          queue=leaf(20, 16, 2, dtype=dtype).detach() if entry.queue else None)
        return entry.loss(out, params)

    loss = loss_at(labels)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert trained.grad is not None and trained.grad.shape == trained.shape
    assert torch.isfinite(trained.grad).all()
    assert trained.grad.abs().sum() > 0
    if not entry.uses_labels:
        torch.testing.assert_close(loss_at(torch.zeros_like(labels)), loss.detach())


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_offset_invariant_says_whether_the_loss_ignores_a_shared_offset(name):
    """The flag decides how the collapse check measures spread, so it must match the loss itself."""
    entry = OBJECTIVES[name]
    params = entry.params()
    n, dim = 8, 16
    labels = (torch.arange(n) % 3).repeat(entry.views)
    rows = {"z": leaf(n * entry.views, dim, 0, dtype=torch.float64).detach(),
            "p": leaf(n * entry.views, dim, 3, dtype=torch.float64).detach() if entry.predictor else None,
            "target": leaf(n * entry.views, dim, 1, dtype=torch.float64).detach() if entry.target else None,
            "queue": leaf(20, dim, 2, dtype=torch.float64).detach() if entry.queue else None}

    def loss_with(offset):
        shifted = {k: v + offset if v is not None else None for k, v in rows.items()}
        if not entry.reads_views:
            return entry.loss(shifted["z"], labels, params)
        return entry.loss(ViewOutputs(shifted["z"], labels, p=shifted["p"], target=shifted["target"],
                                      queue=shifted["queue"]), params)

    offset = 3.0 * torch.randn(dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    unchanged = torch.allclose(loss_with(offset), loss_with(0.0), rtol=1e-4, atol=1e-7)
    assert unchanged == entry.offset_invariant


def test_centred_spread_sees_past_a_shared_offset_but_not_a_constant_output():
    z = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    offset = 20 * torch.ones(32)
    assert embedding_spread(z + offset) < COLLAPSE_STD < 0.9 < embedding_spread(z + offset, centre=True)
    assert embedding_spread(offset.expand(256, 32), centre=True) < COLLAPSE_STD


def test_effective_rank_counts_the_directions_the_embeddings_use_which_the_spread_cannot():
    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(256, 32, generator=generator)
    # four directions in 32 dimensions, then a shared offset: spread and rank disagree
    few = torch.randn(256, 4, generator=generator) @ torch.linalg.qr(torch.randn(32, 4, generator=generator))[0].T
    assert 24 < embedding_rank(isotropic) <= 32
    assert 3.5 < embedding_rank(few + 5.0) <= 4.0 + 1e-4
    assert embedding_spread(few, centre=True) > 0.4  # the spread alone reads few directions as healthy
    assert embedding_rank(torch.full((256, 32), 0.3)) == 0.0
    assert math.isnan(embedding_rank(torch.full((8, 4), float("nan"))))


@pytest.mark.parametrize("mining", sorted(TRIPLET_MINERS))
def test_every_triplet_mining_gives_finite_loss_and_gradients(mining):
    x = leaf(12, 8, 0)
    loss = loss_of("triplet")(x, torch.arange(12) % 3, params_of("triplet", mining=mining, margin=0.5))
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


VERIFY_PARAMS = [(name, {}) for name in OBJECTIVES.names() if OBJECTIVES[name].verify is not None]
VERIFY_PARAMS += [("triplet", {"normalize": False})] if OBJECTIVES.get("triplet") is not None else []
VERIFY_IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in VERIFY_PARAMS]


def test_pair_objectives_offer_verify():
    assert {"pair", "cosine_pair", "triplet"} <= {name for name, _ in VERIFY_PARAMS}


@pytest.mark.parametrize("name,kw", VERIFY_PARAMS, ids=VERIFY_IDS)
def test_verify_identical_same_and_far_apart_different(name, kw):
    entry = OBJECTIVES[name]
    params = entry.params(**kw)
    fa = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    same = entry.verify(fa, fa.clone(), params)
    assert same.dtype == torch.bool and same.shape == (6,)
    assert same.all()
    different = entry.verify(fa, -10 * fa, params)
    assert not different.any()


def test_embeddings_along_one_direction_are_collapsing_however_far_they_spread():
    """NNCLR with batch norm in its head read a spread of 0.54 at a rank of 1.5 of 64: the spread check
    alone passes such embeddings."""
    generator = torch.Generator().manual_seed(0)
    line = torch.randn(256, 1, generator=generator) * torch.randn(1, 64, generator=generator)
    line = line + 0.01 * torch.randn(256, 64, generator=generator)
    spread, rank = embedding_spread(line, centre=True), embedding_rank(line)
    assert spread > COLLAPSE_STD and rank < 2 and is_collapsing(spread, rank)
    isotropic = torch.randn(256, 64, generator=generator)
    assert not is_collapsing(embedding_spread(isotropic), embedding_rank(isotropic))
    assert not is_collapsing(float("nan"), float("nan"))
