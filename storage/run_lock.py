"""One writer per run folder: the process that writes a run's checkpoints (rank 0) holds an
exclusive lock on RUN_DIR/run.lock for as long as it lives.

The lock is flock(2) on a file this process keeps open, so the kernel drops it whenever the
process ends, kill -9 included: a lock is never left behind to block a resume. (A child
forked from the holder shares the lock until it exits too; exec'd children do not get it.)
The file also holds who has it (host, pid, start time), for the message a second run gets:

    with hold(run_dir):    # or: lock = acquire(run_dir) ... lock.release()
        train

Shared filesystems: NFSv4 (and NFSv3 with lockd) turn flock into a lock the server holds, so
it works across nodes; a node that dies keeps it until the server's lease runs out (90 s by
default on NFSv4). Mounts with `nolock` or `local_lock=flock|all`, and Lustre without its
`flock` option, lock per node only: a run on another node is not stopped. Where the
filesystem refuses file locks, acquire() warns and goes on without one.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time

from errors import BadInput

LOCK_FILE = "run.lock"
# flock's answers on filesystems that do not lock at all (Lustre without -o flock, some FUSE)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class RunFolderBusy(BadInput):
    """Another live process holds the run folder; the message names it."""


class RunLock:
    """A held lock (fd is None when the filesystem has no locks). Release it, or let the
    process end."""

    def __init__(self, path: str, fd: int | None):
        self.path, self.fd = path, fd

    def release(self):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # no stale name for the next reader
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def acquire(run_dir: str, wait_s: float = 0.0, say=print) -> RunLock:
    """Lock run_dir for this process, waiting up to wait_s for a holder to finish; raise
    RunFolderBusy naming the holder if it does not."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _describe(path)
                os.close(fd)
                raise RunFolderBusy(
                    f"{run_dir} is in use by another run ({holder}); two runs writing one "
                    f"folder would mix their checkpoints: wait for it to end (or stop it), "
                    f"or pick another --run_name"
                ) from None
            time.sleep(0.2)
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            os.close(fd)
            if say:
                say(
                    f"warning: the filesystem of {run_dir} does not lock files ({e.strerror}); nothing "
                    f"stops a second run from writing this folder at the same time"
                )
            return RunLock(path, None)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode(), 0)
    os.fsync(fd)
    return RunLock(path, fd)


def _describe(path: str) -> str:
    """Who holds the lock, from what the holder wrote into the file."""
    try:
        with open(path) as fh:
            info = json.load(fh)
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}; its lock is {path}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"a process that has not written its name yet; its lock is {path}"


@contextlib.contextmanager
def hold(run_dir: str, wait_s: float = 0.0, say=print):
    lock = acquire(run_dir, wait_s, say)
    try:
        yield lock
    finally:
        lock.release()
