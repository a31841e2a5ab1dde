"""User-facing errors: the CLI prints their message as one line and exits with their code."""

from __future__ import annotations

from collections.abc import Iterable


class KDBenchError(Exception):
    """An error caused by the user's input; `exit_code` 2 for usage errors."""

    exit_code = 1


class UsageError(KDBenchError):
    exit_code = 2


def unknown(kind: str, name: str, choices: Iterable[str]) -> UsageError:
    """`unknown method 'x'; valid: a, b, c` as a UsageError."""
    return UsageError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(choices))}")
