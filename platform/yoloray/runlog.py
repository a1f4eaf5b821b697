"""Ray's own output of a command goes to a log file; the terminal gets only what the command says.

Ray writes to the driver's stdout and stderr from several places: its C++ core (worker and actor errors), the
error-message thread (a failed actor's traceback as "(raylet) ..."), Ray Data's loggers (progress, and a full
stack trace for every failed operator). A start that fails in an actor (fp16 on a CPU-only machine, a corrupt
checkpoint) printed 200+ lines and several tracebacks before the one line that says what to do.

`ray_output_to(path)` points file descriptors 1 and 2 (and so everything Ray prints) at `path` for the duration,
and yields the terminal: the command writes its messages there (`say`). Python's sys.stdout/sys.stderr are the
same objects as before; they write to the log file while the block runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def log_path(command: str) -> Path:
    """Where a command's Ray log goes: $YOLORAY_LOG_DIR, else <temp dir>/yoloray-logs (not the --out folder: a
    finished job's rerun writes nothing there)."""
    base = Path(os.environ.get("YOLORAY_LOG_DIR") or Path(tempfile.gettempdir()) / "yoloray-logs")
    return base / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextlib.contextmanager
def ray_output_to(path: Path) -> Iterator[TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    try:
        with open(path, "ab", buffering=0) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield terminal
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        terminal.close()
        os.close(saved[0])
        os.close(saved[1])
