"""train.py with a fault injected, for the fault tests (never part of a real run).

    FAULT=hang:RANK:STEP           rank RANK stops answering before training step STEP
    FAULT=die_once:RANK:STEP:FILE  rank RANK dies at step STEP, once (FILE records that it did)
    FAULT=slow:SECONDS             every step takes at least SECONDS longer
    torchrun ... tests/run_with_faults.py ARGS...   (ARGS as for train.py)

When the process exits it prints THREADS_AT_EXIT=<names of the threads still alive>, so
a test can check that no communication thread outlives the run.
"""

import atexit
import json
import os
import signal
import time

import train
from errors import run_cli


def inject(spec: str):
    kind, *args = spec.split(":")
    rank = int(os.environ.get("RANK", "0"))
    real = train.micro_batches

    def micro_batches(run, step):
        if kind == "hang" and rank == int(args[0]) and step == int(args[1]):
            # a hung process does not run Python signal handlers: let torchrun's SIGTERM end it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            print(f"rank {rank}: hanging at step {step}", flush=True)
            time.sleep(3600)
        if (
            kind == "die_once"
            and rank == int(args[0])
            and step == int(args[1])
            and not os.path.exists(args[2])
        ):
            open(args[2], "w").close()
            print(f"rank {rank}: dying at step {step}", flush=True)
            os._exit(1)
        if kind == "slow":
            time.sleep(float(args[0]))
        return real(run, step)

    train.micro_batches = micro_batches


def thread_names() -> list:
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return []
    return sorted(open(os.path.join(tasks, t, "comm")).read().strip() for t in os.listdir(tasks))


if __name__ == "__main__":
    if os.environ.get("FAULT"):
        inject(os.environ["FAULT"])
    atexit.register(lambda: print("THREADS_AT_EXIT=" + json.dumps(thread_names()), flush=True))
    run_cli(train.main)
