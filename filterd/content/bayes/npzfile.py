"""Writing the Bayes files (model and score scale) so that a crash never leaves half a file.

Both are NumPy archives (never pickles): written to a temporary file in the same
directory, fsync'd, renamed over the old one, then the directory fsync'd, so a reader
sees the old file or the new one and the rename survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np


def save_npz(path: str, *, compressed: bool = False, **arrays: Any) -> None:
    """Write ``arrays`` to ``path`` atomically (see the module docstring)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem = os.path.basename(path).split(".")[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
