"""The state of a run that is not weights or optimizer: the one place `step` lives.

A checkpoint stores these fields at its top level and a resumed run restores them, so the
step count, the best val loss, early stopping's patience and the training clock all
continue where they were.
"""
import dataclasses
import math


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer updates done; the next step trains batch `step`
    best_val_loss: float = math.inf  # lowest finite val loss so far (after step 0)
    baseline_val_loss: float = math.inf  # val loss of the weights the run started from (step 0)
    evals_without_improvement: int = 0  # for early stopping
    elapsed_s: float = 0.0  # training time, carried across resumes (not wall time between launches)
    skipped_steps: int = 0  # updates not applied: a non-finite loss or gradient, or an fp16 overflow

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainState":
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})

    def record_eval(self, val_loss: float) -> bool:
        """Count an evaluation after `step` updates; True when it is the best so far. The
        weights a run starts from (untrained, or --init_from's) are its baseline, never a
        best model, and a best must beat them; a NaN or inf loss is never best."""
        if self.step == 0:
            self.baseline_val_loss = val_loss if math.isfinite(val_loss) else math.inf
            return False
        improved = math.isfinite(val_loss) and val_loss < min(self.best_val_loss, self.baseline_val_loss)
        if improved:
            self.best_val_loss = val_loss
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        return improved
