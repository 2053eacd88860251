"""A run's metrics as it goes: metrics.jsonl, and TensorBoard event files beside it when asked.

The stream lives in the store's work folder (tmp/<id>.work/) next to the checkpoint, because the
artifact folder only exists once the build has finished; the stage copies it into the artifact at
the end. Each line is one JSON object with the global `step` it was logged at. A resumed run drops,
on its first record, every line at or past that record's step (the lines a killed run logged after
its last checkpoint), so the stream continues without duplicates; a run that starts over drops all.
Lines are buffered and flushed every second and before each checkpoint, so what a checkpoint covers
is on disk when it is.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

from clt.errors import CltError

METRICS_FILE = "metrics.jsonl"
FLUSH_SECONDS = 1.0


class Sink(Protocol):
    """Where else a record's numbers go (TensorBoard)."""

    def scalars(self, record: dict[str, Any], first: bool) -> None: ...
    def close(self) -> None: ...


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line a kill cut short (the last) is left out."""
    records = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def plain_number(value: Any) -> Any:
    """JSON has no NaN or infinity: those are written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsStream:
    """Appends records to `path` (one JSON object per line) and hands them to `sinks`.

    Example: stream = MetricsStream(work / "metrics.jsonl"); stream.log({"event": "epoch", "step": 22, "loss": 0.4})
    """

    def __init__(self, path: Path, sinks: list[Sink] | None = None):
        self.path = Path(path)
        self.sinks = list(sinks or [])
        self._handle = None
        self._flushed = time.monotonic()

    def log(self, record: dict[str, Any]) -> None:
        first = self._handle is None
        if first:
            self._open(int(record["step"]))
        self._handle.write(json.dumps({k: plain_number(v) for k, v in record.items()}, default=str) + "\n")
        for sink in self.sinks:
            sink.scalars(record, first)
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def _open(self, step: int) -> None:
        """Keep the lines logged before `step` (a resumed run's), drop the rest, then append."""
        kept = [r for r in read_metrics(self.path) if isinstance(r.get("step"), (int, float)) and r["step"] < step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.tmp")
        try:
            partial.write_text("".join(json.dumps(r) + "\n" for r in kept))
            partial.replace(self.path)
        finally:  # a write that failed (a full disk) leaves no half file in the work folder
            partial.unlink(missing_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for sink in self.sinks:
            sink.close()


class FlushingCheckpointer:
    """A checkpointer that flushes the stream first, so every line before a checkpoint is on disk."""

    def __init__(self, inner: Any, stream: MetricsStream):
        self.inner, self.stream = inner, stream

    def save(self, state: dict[str, Any]) -> None:
        self.stream.flush()
        self.inner.save(state)

    def load(self) -> dict[str, Any] | None:
        return self.inner.load()


class TensorBoardSink:
    """The stream's numbers as TensorBoard scalars (`<event>/<name>` at the record's step), plus images.

    Example: TensorBoardSink("runs/digits").image("views", grid_hwc_uint8, 0)
    """

    SKIPPED = ("event", "step", "epoch", "image_height", "embedding_dim", "collapse_warning")

    def __init__(self, logdir: str | Path):
        self.logdir = str(logdir)
        self._writer = None

    def _open(self, purge_step: int | None):
        if self._writer is None:
            SummaryWriter = tensorboard_writer()
            # a resumed run's events at or past its first step supersede the killed run's
            self._writer = SummaryWriter(self.logdir, purge_step=purge_step)
        return self._writer

    def scalars(self, record: dict[str, Any], first: bool) -> None:
        writer = self._open(int(record["step"]) if first else None)
        event = record.get("event", "step")
        for name, value in record.items():
            if name not in self.SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"{event}/{name}", value, int(record["step"]))

    def image(self, tag: str, picture: Any, step: int) -> None:
        """An (H, W, 3) uint8 picture."""
        self._open(None).add_image(tag, picture, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def tensorboard_writer():
    """torch's SummaryWriter, or a CltError naming the extra when tensorboard is not installed."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it, and says so less clearly)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CltError("--tensorboard needs the tensorboard package, which is not installed",
                       "install clt's extra: pip install 'clt[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


def png_pixels(path: Path) -> Any:
    """A PNG as an (H, W, 3) uint8 array, for TensorBoard."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
