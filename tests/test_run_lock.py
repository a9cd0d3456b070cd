"""run_lock.py: one writer per run folder; a killed holder never blocks the next run."""

import json
import os
import signal
import socket
import subprocess
import sys
import types

import pytest

from storage import run_lock

HOLD = (
    "import sys; from storage import run_lock\n"
    "lock = run_lock.acquire({run!r})\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()  # until the test closes stdin\n"
    "lock.release()\n"
)


def holder(run_dir):
    """Another process that takes the lock and keeps it until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(run=str(run_dir))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(run_lock.RunFolderBusy) as e:
            run_lock.acquire(str(tmp_path))
        message = str(e.value)
        assert message.startswith(
            f"{tmp_path} is in use by another run (host {socket.gethostname()}, pid {proc.pid}, started 20"
        )
        assert "--run_name" in message and "\n" not in message
    finally:
        proc.stdin.close()
        proc.wait()


def test_after_kill_9_of_the_holder_the_folder_is_free(tmp_path):
    proc = holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with run_lock.hold(str(tmp_path)):  # no wait, no stale lock to clean up
        with open(tmp_path / run_lock.LOCK_FILE) as fh:
            assert json.load(fh)["pid"] == os.getpid()
        with pytest.raises(run_lock.RunFolderBusy, match=f"pid {os.getpid()}"):
            run_lock.acquire(str(tmp_path))  # one writer, even within a process
    assert (tmp_path / run_lock.LOCK_FILE).read_text() == ""  # released: no name left behind
    run_lock.acquire(str(tmp_path)).release()


def test_a_holder_that_finishes_within_wait_s_hands_over(tmp_path, monkeypatch):
    proc = holder(tmp_path)
    waits = []

    def holder_finishes_while_we_wait(seconds):
        """acquire() found the lock held and waits: the holder ends now."""
        waits.append(seconds)
        if len(waits) == 1:
            proc.stdin.close()
            proc.wait()

    monkeypatch.setattr(
        run_lock, "time", types.SimpleNamespace(monotonic=lambda: 0.0, sleep=holder_finishes_while_we_wait)
    )
    lock = run_lock.acquire(str(tmp_path), wait_s=60)
    assert len(waits) == 1  # it waited once, then had the lock
    with open(tmp_path / run_lock.LOCK_FILE) as fh:
        assert json.load(fh)["pid"] == os.getpid()
    lock.release()


def test_a_holder_that_outlasts_wait_s_is_named(tmp_path, monkeypatch):
    proc = holder(tmp_path)
    now = [0.0]
    clock = types.SimpleNamespace(monotonic=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(run_lock, "time", clock)  # run_lock's clock only: it waits without sleeping
    try:
        with pytest.raises(run_lock.RunFolderBusy, match=f"pid {proc.pid}"):
            run_lock.acquire(str(tmp_path), wait_s=5)
        assert now[0] >= 5  # it waited the whole wait_s first
    finally:
        proc.stdin.close()
        proc.wait()


def test_a_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    """Lustre without -o flock answers flock with ENOSYS: say what is not protected."""
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    said = []
    lock = run_lock.acquire(str(tmp_path), say=said.append)
    assert said == [
        f"warning: the filesystem of {tmp_path} does not lock files (Function not implemented); "
        f"nothing stops a second run from writing this folder at the same time"
    ]
    lock.release()
