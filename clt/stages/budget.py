"""A pretraining time budget: whole epochs planned from a timed trial, and the planned duration.

`pretrain.minutes` (or `clt pretrain --minutes N`) plans `pretrain.epochs` as the whole epochs
whose steps fit the budget at the seconds per step a short trial measured, so a schedule laid out
over the epochs (cosine, warm-up) ends on time. The budget counts training steps only: the trial,
loading the data and the kNN monitor come on top. Plain python (no torch): the pretrain memo reads
`machine()` before anything heavy is imported.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from clt.errors import RecipeError

TRIAL_STEPS = 10  # steps per trial epoch; the trial runs two and times the second (the first warms up)
CLOCK_STEPS = 5  # steps a run without a budget times (after its first) for its own estimate


@dataclass(frozen=True)
class Plan:
    """The epochs a budget buys, and what they were planned from."""

    minutes: float
    epochs: int
    steps: int  # per epoch
    seconds_per_step: float
    trial_steps: int

    @property
    def planned_seconds(self) -> float:
        return self.epochs * self.steps * self.seconds_per_step

    def line(self) -> str:
        return (f"planned: {self.epochs} epochs × {self.steps} steps, about {self.planned_seconds / 60:.1f} min of "
                f"the {self.minutes:g} asked for (from a {self.trial_steps}-step trial: "
                f"{self.seconds_per_step:.3g} s/step)")

    def manifest(self) -> dict[str, Any]:
        return {**asdict(self), "planned_seconds": round(self.planned_seconds, 2)}


def plan_epochs(minutes: float, seconds_per_step: float, steps: int, trial_steps: int = TRIAL_STEPS) -> Plan:
    """The whole epochs of `steps` steps that fit `minutes`; a budget short of one epoch is refused
    (training one anyway would overrun the budget by the time the user meant to cap)."""
    epoch_seconds = max(seconds_per_step, 1e-9) * steps
    # the tolerance keeps a budget of exactly N epochs from rounding down to N - 1
    epochs = math.floor(minutes * 60 / epoch_seconds + 1e-9)
    if epochs < 1:
        raise RecipeError(f"pretrain.minutes = {minutes:g} is less than one epoch here: an epoch of {steps} steps "
                          f"takes about {epoch_seconds / 60:.2g} min ({seconds_per_step:.3g} s/step in a "
                          f"{trial_steps}-step trial)",
                          f"ask for at least {math.ceil(epoch_seconds / 60 * 100) / 100:g} minutes, or train on fewer "
                          "images with --set data.train_limit=N")
    return Plan(minutes, epochs, steps, seconds_per_step, trial_steps)


def machine() -> str:
    """What a plan was timed on, as far as is known without importing torch: a plan is only as good
    as the machine it was timed on, so the memo of a budgeted run names it."""
    return f"{platform.node()}/{platform.machine()}/{os.cpu_count()}/{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"


def read_plan(path: Path) -> Plan | None:
    """A plan saved when its run started (None when absent or not a plan): an interrupted run resumes
    with the epochs it was planned with, where a fresh trial could plan others and start over."""
    try:
        fields = json.loads(path.read_text())
        plan = Plan(float(fields["minutes"]), int(fields["epochs"]), int(fields["steps"]),
                    float(fields["seconds_per_step"]), int(fields["trial_steps"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return plan if plan.epochs >= 1 and plan.steps >= 1 else None


class StepClock:
    """A run without a budget times its own first steps (no extra work) and says once how long the
    whole run will take. `cost(epoch)`: an epoch's time relative to the epoch being timed (progressive
    resizing: smaller images, cheaper steps)."""

    def __init__(self, say: Callable[[str], None], epochs: int, steps: int, cost: Callable[[int], float]):
        self.say, self.epochs, self.steps, self.cost = say, epochs, steps, cost
        self.calls, self.started, self.first = 0, 0.0, 0

    def tick(self, epoch: int, completed: int) -> None:
        """After each step: `completed` steps of the whole run are done, the last in 0-based `epoch`."""
        self.calls += 1
        if self.calls == 1:  # the first step warms up (allocation, autotuning, compilation): not timed
            self.started, self.first = time.perf_counter(), completed
        elif self.calls == CLOCK_STEPS + 1:
            per_step = (time.perf_counter() - self.started) / CLOCK_STEPS
            self.say(self.line(epoch, completed, per_step))

    def line(self, epoch: int, completed: int, per_step: float) -> str:
        """The whole run's time (a resumed run's: what is left), in units of the steps just timed."""
        done = 0 if self.first <= 1 else completed
        steps = sum(self.cost(e) * max(0, min(self.steps, (e + 1) * self.steps - done)) for e in range(self.epochs))
        minutes = steps / max(self.cost(epoch), 1e-9) * per_step / 60
        return (f"planned: {self.epochs} epochs × {self.steps} steps, about {minutes:.1f} min"
                f"{' left' if done else ''} (from this run's steps {self.first + 1}-{completed}: "
                f"{per_step:.3g} s/step)")
