"""Run metrics: one JSON line per event in <run>/metrics.jsonl, and TensorBoard scalars.

Only rank 0 makes a RunLog; other ranks log nothing. Every record gets the wall-clock
"time" it was written, so a report can tell training time from time lost to restarts.
"""
import json
import math
import os
import time


class RunLog:
    def __init__(self, run_dir: str, tensorboard: bool, purge_step: int | None = None):
        """purge_step: a resumed run re-runs the steps from its checkpoint on; TensorBoard
        drops the events logged at purge_step and later by the launch that went before."""
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to load
            self.tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"), purge_step=purge_step)

    def log(self, record: dict):
        """Append one record (it must have "kind" and "step") and mirror its numbers to TensorBoard."""
        record = {**record, "time": record.get("time", time.time())}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()  # a crash loses at most the line being written
        if self.tb is not None and record["kind"] in ("train", "eval"):
            for key, value in record.items():
                if key not in ("kind", "step", "time") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self):
        self.file.close()
        if self.tb is not None:
            self.tb.close()
