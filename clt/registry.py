"""Registries: a new encoder, objective or head is one function and one decorator line.

An unknown name fails loudly with the valid names. Entries live in clt.models and
clt.objectives; they are imported on first lookup so `clt --help` never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from clt.errors import CltError, did_you_mean

T = TypeVar("T")


@dataclass
class NoParams:
    """For entries that take no parameters."""


class Registry(Generic[T]):
    def __init__(self, kind: str, modules: tuple[str, ...]):
        self.kind = kind
        self._modules = modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T | None:
        self._load()
        return self._entries.get(name)

    def __getitem__(self, name: str) -> T:
        entry = self.get(name)
        if entry is None:
            raise CltError(f"unknown {self.kind} '{name}'", did_you_mean(name, self.names()))
        return entry

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __iter__(self):
        return iter(self.names())


@dataclass
class EncoderEntry:
    name: str
    build: Callable[..., Any]  # build(params, in_shape: (C, H, W)) -> nn.Module with .out_dim
    params: type = NoParams
    doc: str = ""


@dataclass
class ObjectiveEntry:
    name: str
    # loss(embeddings, labels, params) -> scalar tensor; with reads_views, loss(ViewOutputs, params)
    loss: Callable[..., Any]
    params: type = NoParams
    views: int = 1  # augmented views per image the loss needs (SimCLR: 2)
    uses_labels: bool = True
    # verify(fa, fb, params) -> bool tensor "same class?": enables pair-verification metrics
    verify: Callable[..., Any] | None = None
    # score(fa, fb, params) -> float tensor, higher = more alike: lets evaluation pick the
    # verification threshold on training pairs instead of using verify's fixed one
    score: Callable[..., Any] | None = None
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    reads_views: bool = False  # the loss takes clt.methods.ViewOutputs (predictor, target, queue)
    predictor: bool = False  # a predictor head on the projections (params.predictor_hidden; 0: none)
    target: bool = False  # a momentum (EMA) target network (params.target_momentum, target_momentum_schedule)
    queue: str | None = None  # rows kept across steps, from "target" or "online" (params.queue_size)
    gather: bool = True  # with several processes, the loss sees every rank's rows
    # the loss ignores an offset shared by every embedding (it centres or standardises each
    # dimension, or reads only distances), so the collapse check centres them first: for it a
    # shared offset is no collapse, while a constant output still is
    offset_invariant: bool = False
    # batch norm in the projection head as the method's reference head has it ("hidden" or "all", as
    # model.projection_norm): without it BYOL collapsed on CIFAR-10 at once (rank 1.3 of 64,
    # bench/results/diagnose/projection_norm.md), so the collapse advice names it first
    head_norm: str | None = None
    # a shipped recipe measured to learn with this objective, named by the collapse and divergence advice
    known_recipe: str = ""

    def compute(self, out: Any, params: Any) -> Any:
        """The loss of one step's clt.methods.ViewOutputs, whichever form the loss takes."""
        return self.loss(out, params) if self.reads_views else self.loss(out.z.float(), out.labels, params)


ENCODERS: Registry[EncoderEntry] = Registry("encoder", ("clt.models",))
OBJECTIVES: Registry[ObjectiveEntry] = Registry("objective", ("clt.objectives",))


def register_encoder(name: str, params: type = NoParams):
    def deco(fn):
        ENCODERS.add(name, EncoderEntry(name, fn, params, _first_line(fn.__doc__)))
        return fn

    return deco


def register_objective(name: str, params: type = NoParams, *, views: int = 1, uses_labels: bool = True,
                       verify: Callable[..., Any] | None = None, score: Callable[..., Any] | None = None,
                       **method: Any):
    """`method`: reads_views, predictor, target, queue, gather, offset_invariant, head_norm, known_recipe
    (see ObjectiveEntry)."""
    def deco(fn):
        OBJECTIVES.add(name, ObjectiveEntry(name, fn, params, views, uses_labels, verify, score,
                                            _first_line(fn.__doc__), **method))
        return fn

    return deco


def summary(entry: EncoderEntry | ObjectiveEntry) -> str:
    """One line on what an entry is: an objective's module docstring (one module per method, naming
    the paper), else the first line of the function's own."""
    import sys

    module = sys.modules.get(getattr(entry, "loss", None).__module__) if isinstance(entry, ObjectiveEntry) else None
    return _first_line(module.__doc__) if module is not None and module.__doc__ else entry.doc


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""
