"""Rich progress bars and logs on stderr for the CLI."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clt.stages import ProgressTask, Reporter


class RichReporter(Reporter):
    def __init__(self, console: Console):
        self.console = console

    def info(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def table(self, renderable: Any) -> None:
        self.console.print(renderable)

    def progress(self, description: str, total: int | None) -> ProgressTask:
        return _RichTask(self.console, description, total)


class _RichTask(ProgressTask):
    def __init__(self, console: Console, description: str, total: int | None):
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
            disable=console.quiet or not console.is_terminal)
        self.task = self.progress.add_task(description, total=total, extra="")

    def __enter__(self) -> _RichTask:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, completed: int, total: int | None = None, **fields: Any) -> None:
        extra = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in fields.items() if k != "description")
        kwargs: dict[str, Any] = {"completed": completed, "extra": extra}
        if total is not None:
            kwargs["total"] = total
        if "description" in fields:
            kwargs["description"] = fields["description"]
        self.progress.update(self.task, **kwargs)
