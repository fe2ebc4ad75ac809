"""Leaf helpers for the caches that jobs share on disk (precomputed reference log-probs, tokenized data): an
exclusive file lock that makes concurrent jobs compute once, content hashes, and a durable write (fsync before the
rename that publishes it). Standard library only."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def hash_file(path: Path, h: Any) -> None:
    """Feed ``path``'s bytes into the hashlib object ``h``."""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    hash_file(path, h)
    return h.hexdigest()


@contextmanager
def locked(lock: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock`` (created if missing) for the block: other processes wait here."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fsync_path(path: Path) -> None:
    """Flush a written file (or a directory's entries) to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
