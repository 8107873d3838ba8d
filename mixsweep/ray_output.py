"""Ray's and Tune's own words go to runs/<sweep>/launch.log, not to the terminal.

What launch prints is mixsweep's: its progress bar, its one-line errors, and
"resume with: mixsweep launch FILE". Ray and Tune add notices meant for their own
users (the token-auth notice of every ``ray.init``, "Resume experiment with:
Tuner.restore(...)", "Stop signal received", "Failed to fetch metrics",
TensorBoard hints) and Ray's C++ client writes its warnings (a GCS that refuses
a token, say) straight to file descriptor 2. While Ray runs in the launch,
:func:`to_log` sends all of them to the sweep's log file:

- Python logging: the handlers of the ``ray`` loggers (``ray``, ``ray.tune``,
  ``ray.data``, ...) that write to a stream are swapped for one that appends
  to the log (with time, level and logger name);
- ``sys.stderr`` (Ray's own handler writes to whatever it is at emit time) and
  file descriptor 2 (Ray's C++ code) point at the log.

mixsweep's own lines go to stdout (the progress display) while this is on, and its
errors are printed after it ends (an error leaves the block before it is shown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO, cast

LOG_NAME = "launch.log"


def _ray_loggers() -> list[logging.Logger]:
    names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    loggers = [logging.getLogger(n) for n in names]
    return [logging.getLogger("ray"), *(lg for lg in loggers if lg.name != "ray")]


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextlib.contextmanager
def to_log(path: Path) -> Iterator[Callable[[], None]]:
    """Within the block, Ray's Python logging, ``sys.stderr`` and fd 2 append to ``path``.

    Yields ``reroute``: call it after ``ray.init``, which drops the handlers of the
    ``ray`` logger when it does not configure logging itself.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    log_file = cast(TextIO, handler.stream)  # typed Optional: None only with delay=True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log_file.write(f"==== launch pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handler.flush()
    swapped: dict[str, tuple[logging.Logger, list[logging.Handler]]] = {}

    def reroute() -> None:
        for lg in _ray_loggers():
            if lg.name != "ray" and not any(_is_console(h) for h in lg.handlers):
                continue
            swapped.setdefault(lg.name, (lg, list(lg.handlers)))
            lg.handlers = [h for h in lg.handlers if not _is_console(h) and h is not handler]
            lg.handlers.append(handler)

    reroute()
    for console in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            console.flush()
    saved_fd = os.dup(2)
    os.dup2(log_file.fileno(), 2)
    saved_stderr = sys.stderr
    sys.stderr = log_file
    try:
        yield reroute
    finally:
        with contextlib.suppress(Exception):
            log_file.flush()
        sys.stderr = saved_stderr
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        for lg, handlers in swapped.values():
            lg.handlers = handlers
        handler.close()
