"""The errors a user sees. Each names the bad input and says how to fix it.

Utilities import nothing local, so every module may raise these.
"""

from __future__ import annotations


class CltError(Exception):
    """A failure the user can fix: printed as one short message, no traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class RecipeError(CltError):
    """A recipe file or override is malformed, has an unknown key, a wrong type or a bad value."""


class StoreError(CltError):
    """An artifact is missing, ambiguous, or fails verification."""


class DataError(CltError):
    """A dataset is missing, or a file given to import it is corrupt or unsupported."""


class TrainingError(CltError):
    """Training diverged (NaN/inf loss) or cannot proceed."""


class DivergenceError(TrainingError):
    """The loss turned NaN or infinite: a result of the run, where the other TrainingErrors are set-up faults."""


# what a Ctrl-C prints, at any moment (the console script prints it even while the CLI loads)
INTERRUPTED = ("interrupted: finished artifacts are intact and nothing half-written was kept; "
               "run the same command again to continue")


def did_you_mean(word: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ' did you mean X?' suffix, or a list of valid choices when nothing is close."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'? (valid: {', '.join(choices)})"
    return f"valid: {', '.join(choices)}"
