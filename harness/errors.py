"""User-facing errors: one line, what was wrong, what was received, how to fix it."""
from __future__ import annotations


class KobenchError(Exception):
    """A user mistake (bad file, unknown model, ...). The CLI prints `error: <message>` and exits with code 2."""

    exit_code = 2


class DataError(KobenchError):
    """A task data file that cannot be read or does not follow the task's documented format."""

    def __init__(self, path: object, where: str | None, problem: str, expected: str | None = None) -> None:
        location = f"{path}" + (f": {where}" if where else "")
        message = f"{location}: {problem}"
        if expected:
            message += f". Expected: {expected}"
        super().__init__(message)


class StoreError(KobenchError):
    """The results store cannot be opened or written as asked."""


class BudgetExceeded(KobenchError):
    """The model does not fit the hardware profile's memory budget."""
