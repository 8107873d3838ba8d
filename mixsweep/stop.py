"""A graceful-stop request (SIGTERM) that may arrive before Ray Tune can take it.

SLURM sends TERM to the sweep driver on scancel, requeue and preemption, and the
sbatch script turns its time-limit warning (USR1) into a TERM to the driver.
Ray Tune stops gracefully on SIGUSR1, but only once ``Tuner.fit`` has installed
its handler; before that a TERM kills the driver (Python's default) or makes
``ray.init`` exit. ``install()``, called first thing by ``launch``, records the
request instead: ``run_sweep`` then starts no trial, or hands the request to Tune
as soon as Tune listens (``forward_to_tune`` from a Tune callback), and launch
exits 3 (resumable). No ray import here: it must be cheap to install early.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_requested = threading.Event()
_forwarded = threading.Event()


def _tune_listens() -> bool:
    handler = signal.getsignal(signal.SIGUSR1)
    return callable(handler) and handler is not _on_term


def forward_to_tune() -> None:
    """Pass a pending stop request to Ray Tune (once) if its SIGUSR1 handler is installed."""
    if _requested.is_set() and not _forwarded.is_set() and _tune_listens():
        _forwarded.set()
        signal.raise_signal(signal.SIGUSR1)


def _on_term(signum: int, frame: Any) -> None:
    _requested.set()
    forward_to_tune()


def install() -> Any:
    """Make SIGTERM a stop request (main thread only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_term)


def request() -> None:
    """Record a stop request (e.g. a SIGTERM that ray.init turned into SystemExit)."""
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    """Forget a request (tests, or a second sweep in one process)."""
    _requested.clear()
    _forwarded.clear()
