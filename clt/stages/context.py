"""What every stage is handed (store, device, precision, a reporter) and what it hands back.

Stages never print: they report through a `Reporter`. The library's is silent or forwards
`ProgressEvent`s to a callback; the CLI turns those events into rich progress bars and logs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from clt.store import Artifact, Store, address


@dataclass(frozen=True)
class ProgressEvent:
    """One thing a stage has to say: a log line, a warning, or a progress bar's start, update, end.

    Example: ProgressEvent("update", "pretrain epoch 1/10", task=3, completed=120, total=9370)
    """

    kind: Literal["info", "warn", "start", "update", "end"]
    message: str = ""
    task: int = 0
    completed: int = 0
    total: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressTask:
    """A progress bar: a context manager whose `update` moves it."""

    def __enter__(self) -> ProgressTask:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, completed: int, total: int | None = None, **fields: Any) -> None:
        pass


class Reporter:
    """How stages talk to the user; silent unless a callback is given."""

    def __init__(self, callback: ProgressCallback | None = None):
        self.callback = callback

    def info(self, message: str) -> None:
        if self.callback:
            self.callback(ProgressEvent("info", message))

    def warn(self, message: str) -> None:
        if self.callback:
            self.callback(ProgressEvent("warn", message))

    def progress(self, description: str, total: int | None) -> ProgressTask:
        return _EventTask(self.callback, description, total) if self.callback else ProgressTask()


_TASK_IDS = itertools.count(1)


class _EventTask(ProgressTask):
    def __init__(self, callback: ProgressCallback, description: str, total: int | None):
        self.callback, self.description, self.total = callback, description, total
        self.task = next(_TASK_IDS)

    def __enter__(self) -> _EventTask:
        self.callback(ProgressEvent("start", self.description, self.task, 0, self.total))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.callback(ProgressEvent("end", self.description, self.task, 0, self.total))

    def update(self, completed: int, total: int | None = None, **fields: Any) -> None:
        self.description = fields.pop("description", self.description)
        self.total = self.total if total is None else total
        self.callback(ProgressEvent("update", self.description, self.task, completed, self.total, fields))


@dataclass
class Context:
    """The store a stage reads and writes, the device it runs on, and how it reports."""

    store: Store
    device: str = "auto"
    precision: str | None = None  # overrides the recipe's precision when set
    report: Reporter = field(default_factory=Reporter)


@dataclass
class Outcome:
    """A stage's artifact and whether it was already in the store."""

    artifact: Artifact
    cached: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.artifact.id, "kind": self.artifact.kind, "name": self.artifact.name,
                "cached": self.cached, "path": str(self.artifact.path), **self.metrics, **self.extra}


def produce(ctx: Context, spec: dict[str, Any], kind: str, build: Callable[[Path, str], dict[str, Any]],
            name: str = "", refs: tuple[str, ...] = ()) -> Outcome:
    """Build the artifact `spec` addresses (once, atomically) unless the store has it."""
    artifact_id = address(spec)
    artifact, cached = ctx.store.produce(spec, kind, lambda tmp: build(tmp, artifact_id), refs=refs, name=name)
    return Outcome(artifact, cached, artifact.metrics)
