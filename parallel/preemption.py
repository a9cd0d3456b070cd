"""Preemption: a scheduler's SIGTERM (sent before it kills a job) or SLURM's SIGUSR1 warning
asks the run to stop. The handler only records the signal; the training loop then finishes
its step, every rank agrees, a checkpoint is written, and the process exits with
EXIT_PREEMPTED so a wrapper or scheduler knows to requeue (torchrun restarts on any
non-zero status when --max_restarts allows).
"""

import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL in sysexits.h: "temporary failure; the user is invited to retry"


class PreemptionSignal:
    """A context: while inside, SIGTERM and SIGUSR1 set `received` instead of killing the
    process; on exit the previous handlers come back."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.received is None:
            print(
                f"received {signal.Signals(signum).name}: finishing this step, then saving a "
                f"checkpoint and exiting",
                file=sys.stderr,
                flush=True,
            )
        self.received = signum
