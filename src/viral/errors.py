"""Expected errors a person fixes (a bad config key, a malformed record, a missing file).

Every such error subclasses `UserError`; the `viral` command prints it as one line
`viral: error: <message>` (plus `viral: hint: <hint>` when one helps) and exits 2, with the
traceback only under `--debug` or `VIRAL_DEBUG=1`. Anything else is a bug and keeps its traceback.
This module imports nothing from `viral`, so every layer may raise these errors.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """An expected error caused by input the user controls; `hint` says how to fix it, when known."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt `word`, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None
