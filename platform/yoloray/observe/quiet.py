"""Keep the driver's console to yoloray's own progress line, unless --verbose.

What is quieted (all of it still goes to Ray's log files under the session's `logs/`):
- Ray Data's progress blocks (`Total Progress: 0/?` every few seconds when stdout is not a terminal, tqdm
  bars in one) and its per-run INFO lines (`Starting execution of Dataset ...`, `Execution plan ...`,
  `... execution finished in ...`): the console handler of the `ray.data` logger keeps WARNING and up,
  and `DataContext.enable_progress_bars` is off.
- The `Token authentication is enabled for this Ray cluster` line a local Ray prints at every start (the
  README says how token authentication works).

Not quieted: warnings and errors of Ray Data, and anything Ray's C++ core writes to stderr itself (one line
about actor constructor arguments in the object store appears per job; it is not an error of the job).
"""

from __future__ import annotations

import logging

TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
PROGRESS_LOGGERS = "ray.data._internal.progress"


class _KeepWarnings(logging.Filter):
    """Drops Ray Data console records below WARNING, and the notice that progress bars are off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not (
            record.name.startswith(PROGRESS_LOGGERS) and record.levelno < logging.ERROR
        )


_FILTER = _KeepWarnings()


def quiet_ray_startup(verbose: bool) -> None:
    """Before ray.init: the token-authentication notice of a local Ray start."""
    if not verbose:
        logging.getLogger(TOKEN_AUTH_LOGGER).setLevel(logging.ERROR)


def quiet_ray_data(verbose: bool) -> None:
    """On the driver, before a Dataset runs (idempotent)."""
    if verbose:
        return
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() != "console" or _FILTER in handler.filters:
            continue
        handler.addFilter(_FILTER)
