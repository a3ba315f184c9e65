"""Atomic file writes: state that must survive an interruption is never left half-written."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination):
    """Yield a temporary path beside `destination`; move it into place only if the block succeeds.

    The temporary file lives in the same folder so that `os.replace` is an atomic rename.
    The temporary name keeps the destination's suffix because some writers (Keras, NumPy) check it.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.stem}.", suffix=destination.suffix
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text_atomic(destination, text: str) -> Path:
    with atomic_path(destination) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(destination)


def write_json_atomic(destination, data) -> Path:
    """Write `data` as indented JSON; NaN is written as null so that strict parsers read it."""
    text = json.dumps(_nan_to_none(data), indent=2, default=_to_builtin)
    return write_text_atomic(destination, text + "\n")


def _to_builtin(value):
    """numpy scalars and arrays (what metrics code returns) as plain Python values."""
    if hasattr(value, "tolist"):
        return _nan_to_none(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value
