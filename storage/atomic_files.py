"""Atomic writes: a file appears complete under its final name or not at all.

Write to a temp file in the same folder, fsync, then os.replace, so a kill at any
moment leaves either the previous file or nothing, never half a file.
"""

import contextlib
import json
import os


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp path next to `path`; on success fsync it and rename it to `path`.
    On an exception the temp file is removed and `path` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(folder, os.O_RDONLY)
            os.fsync(dir_fd)
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str):
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


def write_json(path: str, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")
