"""LARS as SimCLR applies it, against a loop written out from the formula; SGD unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clt.optim import LARS, make_optimizer


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def reference_lars(params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float, momentum: float,
                   weight_decay: float, eta: float) -> list[torch.Tensor]:
    """The update rule of SimCLR's LARS (classic momentum), one tensor at a time, in float64: for
    weights w (not biases or batch norm, i.e. tensors of more than one dimension) g += wd * w,
    trust = eta * |w| / |g|; for every tensor v = m * v + lr * trust * g; w -= v."""
    weights = [p.detach().double().clone() for p in params]
    velocities = [torch.zeros_like(w) for w in weights]
    for step_grads in grads:
        for i, (w, g) in enumerate(zip(weights, step_grads)):
            g = g.double()
            adapted = w.ndim > 1
            if adapted:
                g = g + weight_decay * w
            trust = 1.0
            if adapted and w.norm() > 0 and g.norm() > 0:
                trust = eta * w.norm() / g.norm()
            velocities[i] = momentum * velocities[i] + lr * trust * g
            weights[i] = w - velocities[i]
    return weights


def test_lars_matches_the_formula_over_several_steps():
    net = small_net()
    params = list(net.parameters())
    opt = LARS(params, lr=0.5, momentum=0.9, weight_decay=1e-4, eta=0.001)
    start = [p.detach().clone() for p in params]
    grads = []
    for step in range(4):
        x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        net(x).square().mean().backward()
        grads.append([p.grad.detach().clone() for p in params])
        opt.step()
    # the loop replays, from the same start, the gradients LARS saw along its own path
    expected = reference_lars(start, grads, 0.5, 0.9, 1e-4, 0.001)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach().double(), want, atol=1e-6, rtol=1e-5)
    assert any((got.detach() - s).abs().max() > 1e-4 for got, s in zip(params, start))  # it did move


def test_biases_and_batch_norm_get_neither_decay_nor_adaptation():
    bias = nn.Parameter(torch.ones(3))
    bias.grad = torch.full((3,), 0.5)
    LARS([bias], lr=0.1, momentum=0.0, weight_decay=0.5, eta=0.001).step()
    torch.testing.assert_close(bias.detach(), torch.full((3,), 1 - 0.1 * 0.5))  # plain SGD step


def test_a_weight_step_is_lr_times_eta_times_the_weight_norm():
    weight = nn.Parameter(torch.full((2, 2), 3.0))
    weight.grad = torch.full((2, 2), 100.0)
    LARS([weight], lr=1.0, momentum=0.0, eta=0.01).step()
    step = (torch.full((2, 2), 3.0) - weight.detach()).norm()
    assert step.item() == pytest.approx(0.01 * 6.0, rel=1e-5)  # |w| = 6, independent of |g|


def test_make_optimizer_gives_lars_for_lars_and_plain_sgd_for_sgd():
    params = list(small_net().parameters())
    cfg = SimpleNamespace(lr=0.1, weight_decay=0.0, momentum=0.9, lars_eta=0.002, optimizer="lars")
    lars = make_optimizer(cfg, params)
    assert isinstance(lars, LARS) and lars.param_groups[0]["eta"] == 0.002
    assert type(make_optimizer(SimpleNamespace(**{**vars(cfg), "optimizer": "sgd"}), params)) is torch.optim.SGD


def test_lars_eta_is_range_checked_and_absent_from_addresses_by_default():
    from clt.errors import RecipeError
    from clt.recipe import load_recipe

    with pytest.raises(RecipeError, match="lars_eta"):
        load_recipe("recipes/digits_pair.yaml", ["pretrain.lars_eta=0"])
    assert "lars_eta" not in load_recipe("recipes/digits_pair.yaml").to_dict()["pretrain"]


def test_a_lars_recipe_trains_with_lars_and_has_its_own_address(tmp_path):
    import clt

    runs = {name: clt.pretrain("recipes/digits_simclr.yaml", store=tmp_path, overrides=[
        "pretrain.epochs=1", f"pretrain.optimizer={name}", "pretrain.lr=0.5"]) for name in ("sgd", "lars")}
    assert runs["sgd"].id != runs["lars"].id
    assert runs["lars"].metrics["final_loss"] == runs["lars"].metrics["final_loss"]  # finite, not NaN
    assert runs["lars"].metrics["final_loss"] != runs["sgd"].metrics["final_loss"]
