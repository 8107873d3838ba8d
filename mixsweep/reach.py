"""One bounded reachability check for everything outside the process that mixsweep calls
over the network (W&B for `sync`, the dataset mirrors for a download)."""

from __future__ import annotations

import socket
import threading


def reach(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails, or None; bounded by ``timeout`` in all (the
    name lookup too, which the socket timeout does not cover: a thread does it)."""
    found: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            found.append(None)
        except OSError as err:
            found.append(f"cannot reach {host}:{port}: {err.strerror or err}")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return found[0] if found else f"cannot reach {host}:{port}: no answer within {timeout:g} s"
