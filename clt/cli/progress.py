"""The library's progress events drawn on stderr: rich progress bars, log lines and warnings."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clt.api import ProgressEvent


class RichProgress:
    """A `progress` callback for clt.api: one rich bar per task, info lines as they come, warnings in yellow.

    Example: clt.pretrain("recipes/digits_pair.yaml", progress=RichProgress(Console(stderr=True)))
    """

    def __init__(self, console: Console):
        self.console = console
        self.bars: dict[int, tuple[Progress, Any]] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "info":
            self.console.print(event.message, highlight=False, markup=False, soft_wrap=True)
        elif event.kind == "warn":
            from rich.markup import escape

            from clt.rows import one_line  # a warning quoting a file name stays one line

            self.console.print(f"[bold yellow]warning:[/] {escape(one_line(event.message))}", highlight=False,
                               soft_wrap=True)
        elif event.kind == "start":
            self._start(event)
        elif event.kind == "update" and event.task in self.bars:
            bar, task = self.bars[event.task]
            extra = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in event.fields.items())
            bar.update(task, completed=event.completed, total=event.total, description=event.message, extra=extra)
        elif event.kind == "end" and event.task in self.bars:
            self.bars.pop(event.task)[0].stop()

    def _start(self, event: ProgressEvent) -> None:
        bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            disable=self.console.quiet or not self.console.is_terminal)
        task = bar.add_task(event.message, total=event.total, extra="")
        bar.start()
        self.bars[event.task] = (bar, task)
