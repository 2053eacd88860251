"""Ctrl-C while torch is being imported: held until the import ends, then acted on as usual."""

from __future__ import annotations

import sys


class TorchImportHoldsCtrlC:
    """A meta-path finder for the one import of the `torch` package.

    Ctrl-C while torch imports lands in its C++ start-up code, which aborts the process
    ("terminate called after throwing an instance of 'pybind11::error_already_set'") or
    swallows the interrupt. A Ctrl-C during that import is noted and acted on the moment it
    ends, as an ordinary KeyboardInterrupt: one "interrupted" line, exit 130.
    """

    def find_spec(self, name: str, path=None, target=None):
        if name != "torch":
            return None
        import importlib.util

        sys.meta_path.remove(self)  # torch is imported once; find it the ordinary way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _SigintHeldLoader(spec.loader)
        return spec


class _SigintHeldLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import signal

        # a handler that only takes note (blocking the signal is not enough: another thread,
        # e.g. a BLAS worker started by numpy, would take it and the interrupt would still land
        # inside torch's import)
        caught: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
        try:
            self.loader.exec_module(module)
        finally:
            signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler: KeyboardInterrupt, now
        elif caught and previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def __getattr__(self, name: str):
        return getattr(self.loader, name)
