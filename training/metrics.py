"""Run metrics: one JSON line per event in <run>/metrics.jsonl, TensorBoard scalars, and
optionally the same scalars in Weights & Biases.

Only rank 0 makes a RunLog; other ranks log nothing. Every record gets the wall-clock
"time" it was written, so a report can tell training time from time lost to restarts.
The train and eval records' numbers are the scalars, named "<kind>/<key>" (train/loss,
eval/val_loss, eval/hellaswag_acc_norm_tokens), at the record's step, in both TensorBoard and W&B.
"""

import importlib.util
import json
import math
import os
import secrets
import time

from errors import BadInput
from storage.atomic_files import write_text

SCALAR_KINDS = ("train", "eval")
# The record a RunLog writes first into a metrics.jsonl it recreated: the records before it are lost.
LOST = "lost_records"
WANDB_ID_FILE = "wandb_run_id"  # in the run folder: a resumed launch continues the same W&B run


def check_wandb():
    """ValueError, naming the fix, when wandb is not installed (it is optional)."""
    if importlib.util.find_spec("wandb") is None:
        raise BadInput(
            "wandb_project is set but wandb is not installed: pip install wandb "
            "(or leave wandb_project empty)"
        )


def start_wandb(run_dir: str, project: str, name: str, config: dict | None):
    """A W&B run for this run folder: the first launch makes up its id and keeps it in the
    folder, later launches (resumes) continue that run. WANDB_MODE=offline writes it under
    <run_dir>/wandb without the network (`wandb sync` uploads it later)."""
    check_wandb()
    import wandb  # imported late: optional, and slow to load

    id_path = os.path.join(run_dir, WANDB_ID_FILE)
    if os.path.isfile(id_path):
        with open(id_path) as fh:
            run_id = fh.read().strip()
    else:
        run_id = secrets.token_hex(4)  # W&B's own ids are 8 lowercase letters and digits too
        write_text(id_path, run_id + "\n")
    return wandb.init(project=project, name=name, id=run_id, resume="allow", config=config, dir=run_dir)


def scalars(record: dict) -> dict:
    """The finite numbers of a train or eval record, named "<kind>/<key>"; {} for other kinds."""
    if record["kind"] not in SCALAR_KINDS:
        return {}
    return {
        f"{record['kind']}/{k}": v
        for k, v in record.items()
        if k not in ("kind", "step", "time")
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
    }


class RunLog:
    def __init__(
        self,
        run_dir: str,
        tensorboard: bool,
        purge_step: int | None = None,
        wandb_project: str = "",
        run_name: str | None = None,
        config: dict | None = None,
    ):
        """purge_step: a resumed run re-runs the steps from its checkpoint on; TensorBoard
        drops the events logged at purge_step and later by the launch that went before (W&B
        keeps the first launch's values of those steps: its step only goes forward).
        wandb_project: also log the scalars to W&B, as run_name, with config as its config."""
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to load

            self.tb = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"), purge_step=purge_step)
        self.wandb = start_wandb(run_dir, wandb_project, run_name, config) if wandb_project else None

    def log(self, record: dict):
        """Append one record (it must have "kind" and "step") and mirror its numbers to
        TensorBoard and W&B."""
        record = {**record, "time": record.get("time", time.time())}
        self._recreate_if_gone(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()  # a crash loses at most the line being written
        values = scalars(record)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, record["step"])
        if self.wandb is not None and values and record["step"] >= self.wandb.step:
            self.wandb.log(values, step=record["step"])

    def _recreate_if_gone(self, record: dict):
        """metrics.jsonl deleted (or replaced) while the run trains: what is written to the open
        file would be lost with it. Start the file again, with a record of what is missing."""
        try:
            here = os.path.samestat(os.fstat(self.file.fileno()), os.stat(self.path))
        except FileNotFoundError:
            here = False
        if not here:
            self.file.close()
            self.file = open(self.path, "a")
            lost = dict(kind=LOST, step=record["step"], time=record["time"])
            self.file.write(json.dumps(lost) + "\n")

    def close(self):
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
