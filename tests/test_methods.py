"""The view-based objectives (MoCo v2, BYOL, SimSiam, Barlow Twins, VICReg, NNCLR) and their machinery.

Each loss is checked against a plain per-row / per-entry loop written from its paper, and
against lightly's loss of the same name when lightly can be imported (a bench-only install:
`pip install --no-deps --target DIR lightly`, then PYTHONPATH=DIR)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from torch import nn

from clt.methods import FeatureQueue, MethodParts, ViewOutputs, momentum_at
from clt.objectives.barlow_twins import barlow_twins
from clt.objectives.moco import info_nce
from clt.objectives.vicreg import VICRegParams, vicreg
from clt.recipe import PretrainConfig, load_recipe
from clt.registry import OBJECTIVES
from clt.train import collapse_advice, pretrain
from tests.test_train import _images

VIEW_OBJECTIVES = ["moco", "byol", "simsiam", "barlow_twins", "vicreg", "nnclr"]
HAS_LIGHTLY = importlib.util.find_spec("lightly") is not None


def _random(n: int = 12, d: int = 6, seed: int = 0, grad: bool = True) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_(grad)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / torch.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _grads_equal(loss_a, loss_b, inputs):
    for ga, gb in zip( torch.autograd.grad(loss_a, inputs, retain_graph=True),
                         torch.autograd.grad(loss_b, inputs, retain_graph=True)):
        torch.testing.assert_close(ga.double(), gb.double(), atol=1e-5, rtol=1e-5)


def test_moco_info_nce_matches_the_papers_per_query_loop():
    q, k, queue = _random(5, 4, 0), _random(5, 4, 1), _random(7, 4, 2)
    t = 0.2
    loop = 0
    for i in range(5):
        positive = torch.exp(_cos(q[i], k[i]) / t)
        # the queue's keys, and the batch's other keys
        negatives = sum(torch.exp(_cos(q[i], queue[j]) / t) for j in range(7))
        negatives = negatives + sum(torch.exp(_cos(q[i], k[j]) / t) for j in range(5) if j != i)
        loop -= torch.log(positive / (positive + negatives))
    value = info_nce(q, k, queue, t)
    torch.testing.assert_close(value.double(), loop / 5)
    _grads_equal(value, loop / 5, [q, k])
    assert torch.isfinite(info_nce(q, k, queue[:0], t))  # an empty queue: the batch's keys alone


def test_barlow_twins_matches_the_papers_double_sum():
    z1, z2 = _random(16, 5, 0), _random(16, 5, 1)
    n1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    n2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    loop = 0
    for i in range(5):
        for j in range(5):
            c = sum(n1[b, i] * n2[b, j] for b in range(16)) / 16
            loop = loop + ((1 - c) ** 2 if i == j else 0.0051 * c ** 2)
    value = barlow_twins(z1, z2, 0.0051)
    torch.testing.assert_close(value.double(), loop)
    _grads_equal(value, loop, [z1, z2])


def test_vicreg_matches_the_papers_three_terms_written_out():
    z1, z2 = _random(10, 4, 0), _random(10, 4, 1)
    n, d = 10, 4
    invariance = sum((z1[b, i] - z2[b, i]) ** 2 for b in range(n) for i in range(d)) / (n * d)

    def variance(z):
        return sum(max(0.0, 1 - math.sqrt(float(z[:, i].detach().var()) + 1e-4)) for i in range(d)) / d

    def covariance(z):
        c = z - z.mean(0)
        return sum((sum(c[b, i] * c[b, j] for b in range(n)) / (n - 1)) ** 2
                   for i in range(d) for j in range(d) if i != j) / d

    loop = 25 * invariance + 25 * (variance(z1) + variance(z2)) / 2 + covariance(z1) + covariance(z2)
    torch.testing.assert_close(vicreg(z1, z2, VICRegParams()).double(), torch.as_tensor(loop).double())


def _outputs(n: int = 8, d: int = 6) -> ViewOutputs:
    return ViewOutputs(_random(2 * n, d, 0), torch.zeros(2 * n, dtype=torch.long), p=_random(2 * n, d, 1),
                       target=_random(2 * n, d, 2, grad=False), queue=_random(10, d, 3, grad=False))


def test_byol_and_simsiam_are_symmetrised_cosine_losses_with_stopped_targets():
    out = _outputs()
    n = 8
    byol = OBJECTIVES["byol"].loss(out, OBJECTIVES["byol"].params())
    loop = sum(2 - 2 * _cos(out.p[i], out.target[(i + n) % (2 * n)]) for i in range(2 * n)) / (2 * n)
    torch.testing.assert_close(byol.double(), loop.double())
    simsiam = OBJECTIVES["simsiam"].loss(out, OBJECTIVES["simsiam"].params())
    loop = -sum(_cos(out.p[i], out.z[(i + n) % (2 * n)]) for i in range(2 * n)) / (2 * n)
    torch.testing.assert_close(simsiam.double(), loop.double())
    (z_grad,) = torch.autograd.grad(simsiam, [out.z], retain_graph=True, allow_unused=True)
    assert z_grad is None or not z_grad.any()  # stop-gradient: z only through the predictor's input


def _nnclr_loop(out, t: float, anchors_from_predictions: bool, same_side_negatives: bool) -> torch.Tensor:
    """Per row, from the definitions: neighbour i of one view and prediction i of the other are a positive
    pair; the anchors are the neighbours (and the predictions too where `anchors_from_predictions`)."""
    n = len(out.z) // 2
    nearest = [out.queue[max(range(10), key=lambda j: float(_cos(out.z[i], out.queue[j]).detach()))]
               for i in range(2 * n)]
    total, count = 0.0, 0
    for view in (0, 1):  # neighbours of this view, predictions of the other
        nn_rows = nearest[view * n:(view + 1) * n]
        p_rows = [out.p[j] for j in range((1 - view) * n, (2 - view) * n)]
        sides = [(nn_rows, p_rows)] + ([(p_rows, nn_rows)] if anchors_from_predictions else [])
        for own, other in sides:
            for i in range(n):
                logits = [_cos(own[i], other[j]) / t for j in range(n)]
                if same_side_negatives:
                    logits += [_cos(own[i], own[j]) / t for j in range(n) if j != i]
                total += -(logits[i] - torch.log(sum(torch.exp(v) for v in logits)))
                count += 1
    return total / count


@pytest.mark.parametrize("form, both_ways, same_side", [("one_way", False, False), ("two_way", True, False),
                                                      ("ntxent", True, True)])
def test_nnclr_takes_the_nearest_support_row_as_the_positive_in_each_loss_form(form, both_ways, same_side):
    out, t = _outputs(), 0.5
    loss = OBJECTIVES["nnclr"].loss(out, OBJECTIVES["nnclr"].params(temperature=t, loss_form=form))
    loop = _nnclr_loop(out, t, both_ways, same_side)
    torch.testing.assert_close(loss.double(), loop.double())
    _grads_equal(loss, loop, [out.p])
    if form != "one_way":  # the default: the paper's Eq. 2
        assert not torch.isclose(loss, OBJECTIVES["nnclr"].loss(out, OBJECTIVES["nnclr"].params(temperature=t)))


def test_nnclr_loss_form_is_checked_and_absent_from_addresses_at_its_default():
    from clt.errors import RecipeError

    with pytest.raises(RecipeError, match="loss_form"):
        load_recipe(ROOT / "recipes" / "digits_nnclr.yaml", ["objective.loss_form=both"])
    assert "loss_form" not in load_recipe(ROOT / "recipes" / "digits_nnclr.yaml").to_dict()["objective"]["params"]
    changed = load_recipe(ROOT / "recipes" / "digits_nnclr.yaml", ["objective.loss_form=ntxent"])
    assert changed.to_dict()["objective"]["params"]["loss_form"] == "ntxent"


@pytest.mark.skipif(not HAS_LIGHTLY, reason="lightly is not importable: install it into a bench folder and put "
                                            "that on PYTHONPATH to compare against its losses")
def test_losses_equal_lightlys_on_random_embeddings():
    from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, VICRegLoss

    z1, z2 = _random(32, 8, 0), _random(32, 8, 1)
    for ours, theirs in [(barlow_twins(z1, z2, 0.0051), BarlowTwinsLoss(lambda_param=0.0051)(z1, z2)),
                         (vicreg(z1, z2, VICRegParams()), VICRegLoss()(z1, z2))]:
        torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-5, rtol=1e-5)
        _grads_equal(ours, theirs, [z1, z2])
    out = _outputs()
    ours = OBJECTIVES["simsiam"].loss(out, OBJECTIVES["simsiam"].params())
    p1, p2 = out.halves("p")
    z_1, z_2 = out.halves("z")
    theirs = (NegativeCosineSimilarity()(p1, z_2.detach()) + NegativeCosineSimilarity()(p2, z_1.detach())) / 2
    torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-5, rtol=1e-5)
    from lightly.loss import NTXentLoss  # lightly's NNCLR example: NT-Xent of neighbours and predictions

    nn1, nn2 = out.queue[:8], out.queue[2:]  # any detached rows stand for the neighbours
    theirs = (NTXentLoss(temperature=0.5)(nn1, p2) + NTXentLoss(temperature=0.5)(nn2, p1)) / 2
    from clt.objectives.nnclr import NNCLRParams, nn_info_nce

    params = NNCLRParams(temperature=0.5, loss_form="ntxent")
    ours = (nn_info_nce(nn1, p2, params) + nn_info_nce(nn2, p1, params)) / 2
    torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-5, rtol=1e-5)


def test_momentum_schedule_rises_from_base_to_one():
    assert momentum_at(0.99, 0, 100, "cosine") == pytest.approx(0.99)
    assert momentum_at(0.99, 50, 100, "cosine") == pytest.approx(0.995)
    assert momentum_at(0.99, 100, 100, "cosine") == pytest.approx(1.0)
    assert momentum_at(0.99, 50, 100, "constant") == 0.99


def test_queue_is_a_ring_that_keeps_the_newest_rows():
    queue = FeatureQueue(5, 2)
    assert len(queue.valid()) == 0
    queue.push(torch.ones(3, 2))
    assert queue.valid()[:, 0].tolist() == [1.0, 1.0, 1.0]
    queue.push(torch.full((3, 2), 2.0))
    assert queue.valid()[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0] and int(queue.pointer) == 1


def test_momentum_target_moves_towards_the_online_network():
    online = nn.Linear(3, 2)
    parts = MethodParts(OBJECTIVES["byol"], OBJECTIVES["byol"].params(target_momentum=0.9), online, 2, 0)
    before = parts.target.network.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    parts.after_step(online, ViewOutputs(torch.zeros(2, 2), torch.zeros(2)), step=0, total=10)
    torch.testing.assert_close(parts.target.network.weight, 0.9 * before + 0.1 * online.weight.detach())


class _Tiny(nn.Module):
    out_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.conv(x).mean((2, 3)))


class _NoBatchNorm(nn.Module):
    """Batch norm at the output would hold every dimension's variance at 1 and hide a collapse."""

    out_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 8)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class _Memory:
    def __init__(self, state=None):
        self.saved, self.state = [], state

    def save(self, state):
        self.saved.append(copy.deepcopy(state))

    def load(self):
        return copy.deepcopy(self.state)


def _train(name: str, epochs: int, checkpointer=None, model_type=None, **params):
    torch.manual_seed(0)
    model = (model_type or _Tiny)()
    entry = OBJECTIVES[name]
    cfg = PretrainConfig(epochs=epochs, batch_size=16, lr=0.01)
    result = pretrain(model, entry, entry.params(**params), _images(), cfg, device=torch.device("cpu"),
                      precision="fp32", seed=0, augment=lambda x, g: x + 0.01 * torch.randn(x.shape, generator=g),
                      checkpointer=checkpointer)
    return model, result


@pytest.mark.parametrize("name", VIEW_OBJECTIVES)
def test_each_view_objective_trains_and_a_resumed_run_matches_an_uninterrupted_one(name):
    params = {"queue_size": 20} if name in ("moco", "nnclr") else {}
    params.update({"predictor_hidden": 4} if OBJECTIVES[name].predictor else {})
    memory = _Memory()
    whole, result = _train(name, 2, memory, **params)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    resumed, _ = _train(name, 2, _Memory(memory.saved[0]), **params)  # the state after epoch 1
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert set(memory.saved[-1]["method"]) == set(memory.saved[0]["method"])


def _predictor_lrs(schedule: str, scale: float, steps: int, name: str = "simsiam") -> list[tuple[float, float]]:
    """(model lr, predictor lr) after each of `steps` scheduler steps: a 2-epoch cosine with a
    one-epoch warm-up at lr 0.1, 4 steps an epoch."""
    from clt.optim import make_optimizer, make_scheduler

    entry = OBJECTIVES[name]
    fixed = {"predictor_lr_schedule": schedule} if schedule != "follow" else {}
    params = entry.params(predictor_hidden=4, predictor_lr_scale=scale, **fixed)
    model = _Tiny()
    parts = MethodParts(entry, params, model, 8, 0)
    cfg = PretrainConfig(epochs=2, batch_size=16, lr=0.1, warmup_epochs=1, scheduler="cosine")
    optimizer = make_optimizer(cfg, parts.optimizer_groups(model, cfg.lr))
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=4)
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
    return lrs


def test_a_fixed_predictor_lr_stays_while_the_encoders_lr_warms_up_and_decays():
    lrs = _predictor_lrs("fixed", 10.0, 7)
    model_lrs = [m for m, _ in lrs]
    assert model_lrs[2] > model_lrs[0] and model_lrs[-1] < max(model_lrs)  # warm-up, then cosine decay
    assert all(p == pytest.approx(1.0) for _, p in lrs)  # 0.1 x 10, untouched by either


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_a_following_predictor_lr_is_the_encoders_times_its_scale(name):
    assert all(p == pytest.approx(3 * m) for m, p in _predictor_lrs("follow", 3.0, 7, name))
    assert all(p == pytest.approx(m) for m, p in _predictor_lrs("follow", 1.0, 7, name))


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_predictor_lr_knobs_are_range_checked_and_absent_from_addresses_at_their_defaults(name):
    from clt.errors import RecipeError

    with pytest.raises(RecipeError, match="predictor_lr_scale"):
        load_recipe(ROOT / "recipes" / f"digits_{name}.yaml", ["objective.predictor_lr_scale=0"])
    objective = load_recipe(ROOT / "recipes" / f"digits_{name}.yaml").to_dict()["objective"]["params"]
    assert "predictor_lr_scale" not in objective and "predictor_lr_schedule" not in objective


def test_simsiam_without_predictor_collapses_and_is_warned_about():
    _, with_predictor = _train("simsiam", 3, model_type=_NoBatchNorm, predictor_hidden=4)
    _, without = _train("simsiam", 3, model_type=_NoBatchNorm, predictor_hidden=0)
    assert without.history[-1]["collapse_warning"] and not with_predictor.history[-1]["collapse_warning"]
    assert without.history[-1]["embedding_spread"] < with_predictor.history[-1]["embedding_spread"]


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_collapse_advice_names_only_the_knobs_the_objective_has(name):
    params = OBJECTIVES[name].params()
    advice = collapse_advice(params, lr=0.3)
    assert "pretrain.lr (now 0.3)" in advice and "pretrain.augment" in advice
    assert ("objective.temperature" in advice) == hasattr(params, "temperature")
    assert ("objective.target_momentum" in advice) == hasattr(params, "target_momentum")
    assert "predictor" not in advice  # every default that has a predictor keeps it


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_collapse_advice_puts_a_missing_predictor_first(name):
    advice = collapse_advice(OBJECTIVES[name].params(predictor_hidden=0), lr=0.05)
    assert advice.startswith("give it a predictor (objective.predictor_hidden")


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_collapse_advice_names_the_batch_norm_of_the_methods_reference_head(name):
    """BYOL collapsed on CIFAR-10 (rank 1.3 of 64) with a projection head without batch norm and
    learned with one: the advice names that knob, with the value the method's reference uses."""
    entry = OBJECTIVES[name]
    advice = collapse_advice(entry.params(), 0.3, entry, projection_norm="none")
    if entry.head_norm:
        assert advice.startswith(f"put batch norm in the projection head (model.projection_norm: {entry.head_norm}")
        assert "projection_norm" not in collapse_advice(entry.params(), 0.3, entry, projection_norm=entry.head_norm)
    else:
        assert "projection_norm" not in advice
    assert (entry.known_recipe in advice) if entry.known_recipe else "is measured to learn" not in advice


@pytest.mark.parametrize("name", VIEW_OBJECTIVES)
def test_digits_recipe_of_each_view_objective_pretrains_from_the_cli(name, tmp_path):
    run = subprocess.run([sys.executable, "-m", "clt", "--artifacts", str(tmp_path), "pretrain",
                          f"recipes/digits_{name}.yaml", "--set", "pretrain.epochs=1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()[-1]) == 64  # the encoder artifact's id


KNOWN = [name for name in OBJECTIVES.names() if OBJECTIVES[name].known_recipe]


@pytest.mark.parametrize("name", KNOWN)
def test_a_recipe_the_advice_names_trains_that_objective_and_has_a_record_that_it_learned(name):
    """The collapse and divergence advice says 'measured to learn': the recipe it names must train
    this objective, and bench/results/methods_10ep/ must hold its 10-epoch row at least 10 points
    of 200-NN over the untrained encoder of its precision (bf16 or fp32), with no collapse warning
    at the end."""
    recipe = load_recipe(ROOT / OBJECTIVES[name].known_recipe)
    assert recipe.objective.name == name
    results = ROOT / "bench" / "results" / "methods_10ep"
    rows = [json.loads(p.read_text()) for p in sorted(results.glob(f"{name}-seed*-*.json"))]
    assert rows, f"no 10-epoch record of {name} in {results}"
    assert all(r["recipe"] == Path(OBJECTIVES[name].known_recipe).stem and r["epochs"] == 10 for r in rows)
    for row in rows:
        floor = json.loads((results / f"untrained-seed0-{row['machine']}.json").read_text())["knn200"]
        assert row["knn200"] >= floor + 0.10 and not row["collapse_warning_at_end"], row
