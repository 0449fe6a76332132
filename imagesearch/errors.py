"""The errors a user meets: each message says what happened and what to do next, and shows without a traceback.

A traceback helps whoever wrote the code, not whoever runs it. Every error the
package raises on purpose (no weights offline, damaged saved state, a file that
is no image, a busy folder) derives from `UserFacingError`. The command line
prints such an error as one `error: …` line; in a notebook, IPython asks the
exception how to render itself (`_render_traceback_`, the hook it offers for
exactly this), and it shows its name and message in place of a chained
traceback of a hundred lines. Anything else, a bug, keeps its full traceback.
"""

from __future__ import annotations

_RED, _RESET = "\x1b[0;31m", "\x1b[0m"


class UserFacingError(Exception):
    """An error whose message is complete for the user: shown without a traceback in notebooks and the CLI."""

    def _render_traceback_(self) -> list[str]:
        """The lines IPython shows for this error instead of a traceback: its name and message, nothing else."""
        return [f"{_RED}{type(self).__name__}{_RESET}: {self}"]
