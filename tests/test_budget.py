"""A pretraining time budget (`clt pretrain --minutes N`, `pretrain.minutes`): whole epochs planned
from a timed trial, the planned duration said before the first step, and the plan's address.

The trial's timing is replaced by a fixed seconds-per-step, so every plan here is deterministic."""

from __future__ import annotations

import importlib
import json
import math

import pytest
from conftest import DIGITS, cli

import clt
from clt.errors import RecipeError
from clt.stages import budget
from clt.store import Store

# the module (clt.stages re-exports its function under the same name)
pretrain_stage = importlib.import_module("clt.stages.pretrain")
SMALL = ["data.train_limit=256"]  # 4 steps of 64 per epoch: each test trains in seconds
PER_STEP = 0.01


@pytest.fixture
def trials(monkeypatch) -> list[float]:
    """The trial timed at PER_STEP seconds a step; the list counts the trials run."""
    ran: list[float] = []

    def timed(ctx, recipe, data_art) -> float:
        ran.append(PER_STEP)
        return PER_STEP

    monkeypatch.setattr(pretrain_stage, "trial_step_seconds", timed)
    return ran


def steps_per_epoch(root) -> int:
    """Steps of one digits epoch under SMALL, from the stored dataset (not hard-coded)."""
    from clt.recipe import load_recipe
    from clt.stages.context import Context

    loaded = load_recipe(DIGITS, SMALL)
    data_art = pretrain_stage.dataset_artifact(Context(Store(root)), "digits")
    return pretrain_stage._train_steps(loaded, data_art)


def minutes_for(epochs: float, steps: int) -> float:
    return epochs * steps * PER_STEP / 60


def test_minutes_plans_whole_epochs_and_the_encoder_recipe_holds_them(tmp_path, trials):
    steps = steps_per_epoch(tmp_path)
    minutes = minutes_for(3.5, steps)  # three and a half epochs' time: three whole ones fit
    expected = math.floor(minutes * 60 / (PER_STEP * steps))
    ran = cli(tmp_path, "pretrain", DIGITS, "--minutes", str(minutes), *[a for s in SMALL for a in ("--set", s)])
    encoder = Store(tmp_path).get(ran.ok().id)
    assert trials == [PER_STEP]
    assert encoder.recipe["pretrain"]["epochs"] == expected == 3
    assert encoder.recipe["pretrain"]["minutes"] == pytest.approx(minutes)
    assert len(json.loads(encoder.file("history.json").read_text())) == expected
    assert encoder.manifest["budget"]["seconds_per_step"] == PER_STEP
    assert encoder.manifest["budget"]["steps"] == steps


def test_the_planned_duration_is_said_before_the_first_step(tmp_path, trials):
    steps = steps_per_epoch(tmp_path)
    events = []
    clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes_for(2, steps), store=tmp_path, progress=events.append)
    said = [i for i, e in enumerate(events) if e.kind == "info" and e.message.startswith("planned: 2 epochs")]
    first_step = next(i for i, e in enumerate(events) if e.kind == "update" and e.message.startswith("pretrain"))
    assert said and said[0] < first_step
    assert f"× {steps} steps" in events[said[0]].message and "10-step trial" in events[said[0]].message


def test_a_budget_short_of_one_epoch_is_refused_and_trains_nothing(tmp_path, trials):
    steps = steps_per_epoch(tmp_path)
    with pytest.raises(RecipeError, match="less than one epoch") as err:
        clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes_for(0.5, steps), store=tmp_path)
    assert "at least" in err.value.hint
    assert not [a for a in Store(tmp_path).all() if a.kind == "encoder"]


def test_minutes_with_progressive_resizing_is_refused_by_name(tmp_path, trials):
    with pytest.raises(RecipeError, match="pretrain.minutes cannot plan .* pretrain.progressive_resize"):
        clt.pretrain(DIGITS, overrides=[*SMALL, "pretrain.epochs=3", "pretrain.progressive_resize=[[8, 1]]"],
                     minutes=1, store=tmp_path)
    assert trials == []  # refused before any trial


def test_a_run_without_a_budget_says_its_duration_after_its_first_steps(tmp_path):
    events = []
    clt.pretrain(DIGITS, overrides=[*SMALL, "pretrain.epochs=3"], store=tmp_path, progress=events.append)
    steps = [e for e in events if e.kind == "update" and e.message.startswith("pretrain")]
    said = [i for i, e in enumerate(events) if e.kind == "info" and e.message.startswith("planned: 3 epochs")]
    assert len(said) == 1 and "from this run's steps 2-" in events[said[0]].message
    # after a few steps, not after the last
    assert events.index(steps[budget.CLOCK_STEPS]) < said[0] < events.index(steps[-1])


def test_the_memo_answers_a_budget_only_on_the_machine_that_planned_it(tmp_path, trials, monkeypatch):
    steps = steps_per_epoch(tmp_path)
    minutes = minutes_for(2, steps)
    first = clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes, store=tmp_path)
    again = clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes, store=tmp_path)
    assert again.cached and again.id == first.id and len(trials) == 1  # the memo: no second trial
    monkeypatch.setattr(budget, "machine", lambda: "another/machine")
    elsewhere = clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes, store=tmp_path)
    # planned afresh there; the same epochs address the same encoder, so nothing is trained again
    assert len(trials) == 2 and elsewhere.cached and elsewhere.id == first.id


def test_an_interrupted_budget_run_resumes_with_the_epochs_it_planned(tmp_path, monkeypatch):
    steps = steps_per_epoch(tmp_path)
    minutes = minutes_for(3, steps)
    monkeypatch.setattr(pretrain_stage, "trial_step_seconds", lambda ctx, recipe, data_art: PER_STEP)

    def interrupt(event):
        if event.kind == "update" and event.completed == steps + 1:  # in the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes, store=tmp_path, progress=interrupt)
    # a fresh trial would now plan one epoch; the saved plan keeps three, and the checkpoint with them
    monkeypatch.setattr(pretrain_stage, "trial_step_seconds", lambda ctx, recipe, data_art: 3 * PER_STEP)
    resumed = clt.pretrain(DIGITS, overrides=SMALL, minutes=minutes, store=tmp_path)
    assert Store(tmp_path).get(resumed.id).recipe["pretrain"]["epochs"] == 3
    assert len(json.loads(resumed.file("history.json").read_text())) == 3
    assert not list(tmp_path.glob("tmp/*.work/plan.json"))  # the memo answers from now on


def test_minutes_out_of_range_is_refused_by_key(tmp_path):
    with pytest.raises(RecipeError, match=r"pretrain.minutes = -1(\.0)? is out of range"):
        clt.pretrain(DIGITS, overrides=SMALL, minutes=-1, store=tmp_path)


def test_plan_epochs_rounds_an_exact_budget_to_its_epochs():
    assert budget.plan_epochs(minutes_for(7, 22), PER_STEP, 22).epochs == 7


def test_the_trial_times_real_steps_and_stores_nothing(tmp_path):
    from clt.recipe import load_recipe
    from clt.stages.context import Context

    ctx = Context(Store(tmp_path))
    recipe = load_recipe(DIGITS, [*SMALL, "pretrain.batch_size=16", "pretrain.precision=fp32"])
    data_art = pretrain_stage.dataset_artifact(ctx, "digits")
    before = set(Store(tmp_path).ids())
    per_step = pretrain_stage.trial_step_seconds(ctx, recipe, data_art)
    assert 0 < per_step < 60 and math.isfinite(per_step)
    assert set(Store(tmp_path).ids()) == before
