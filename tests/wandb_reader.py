"""Read the history records of an offline W&B run file (``run-<id>.wandb``).

The file is a LevelDB-style log (32 KiB blocks of records with a 7-byte header:
crc32, length, type) after a 7-byte file header; each record is a protobuf
``wandb.proto.wandb_internal_pb2.Record``. Tests use it to check what a trial
logged, without the network.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if not data:  # a session killed (or out of disk) before wandb wrote anything
        return
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def history_steps(path: Path) -> list[int]:
    """The ``step`` of every history row logged in one offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    steps = []
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            steps.append(rec.history.step.num)
    return steps


def logged_epochs(sweep_root: Path, trial_id: str) -> list[int]:
    """Every epoch a trial logged, over all its offline sessions (resumes), in order."""
    out: list[int] = []
    for run_dir in sorted((sweep_root / "wandb").glob(f"offline-run-*-{trial_id}")):
        for f in run_dir.glob("run-*.wandb"):
            out += history_steps(f)
    return out
