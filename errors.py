"""Errors a user can fix, and the one place that turns them into a line and an exit status.

A UserError says what happened and a fix that works, on one line: a bad setting or input
file, a missing or damaged checkpoint, a full or read-only disk, a run folder in use, a
package or download the machine lacks. Every entry point runs its main() through run_cli():
a UserError prints `error: <message>` and exits 1; anything else is a bug (here, in torch, in
CUDA) and keeps its traceback, so that it can be found. This module imports nothing of the
project, so that every layer may raise these.

Each kind is also the built-in exception it refines (BadInput is a ValueError, NotFound a
FileNotFoundError, ...), so code that catches the built-in one still catches it.
"""

import errno
import sys

# What the filesystem says when the disk, not the code, is at fault: the same one line.
DISK_ERRNOS = {
    errno.ENOSPC: "make room on that disk, or write elsewhere",
    errno.EDQUOT: "make room within your quota, or write elsewhere",
    errno.EFBIG: "the file is larger than that filesystem allows: write elsewhere",
    errno.EROFS: "make that filesystem writable, or write elsewhere",
    errno.EACCES: "make it writable for this user, or write elsewhere",
}


class UserError(Exception):
    """Something the user can fix; the message names what happened and the fix."""


class BadInput(UserError, ValueError):
    """A setting, a file or a checkpoint that cannot be used as it is."""


class NotFound(UserError, FileNotFoundError):
    """A file or folder that is not there."""


class CannotWrite(UserError, OSError):
    """A write the disk refused: full, read-only, over a quota."""


class MissingDependency(UserError, RuntimeError):
    """A package, a download or a cache the machine lacks."""


def run_cli(main, argv=None):
    """Run an entry point's main(argv) and exit: with its status when it returns an int
    (train.py's 75 asks a scheduler to requeue), else 0; on a UserError (or a disk that is
    full or read-only) with `error: <message>` on one line and status 1."""
    try:
        status = main(argv)
    except UserError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        sys.exit(f"error: {e}; {DISK_ERRNOS[e.errno]}")
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)
