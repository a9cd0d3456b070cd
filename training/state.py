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
    watched: str = "val_loss"  # the metric early stopping watches (TrainConfig.early_stopping_metric)
    best_watched: float = math.inf  # its best so far, as a loss: accuracies are negated

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainState":
        state = cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})
        if "best_watched" not in saved:  # saved before early stopping could watch anything but the val loss
            state.best_watched = state.best_val_loss
        return state

    def record_val_loss(self, val_loss: float) -> bool:
        """Count an evaluation's val loss after `step` updates for best_model.pt; True when it
        is the best so far. The weights a run starts from (untrained, or --init_from's) are
        its baseline, never a best model, and a best must beat them; a NaN or inf is never
        best."""
        finite = math.isfinite(val_loss)
        if self.step == 0:
            self.baseline_val_loss = val_loss if finite else math.inf
            return False
        improved = finite and val_loss < min(self.best_val_loss, self.baseline_val_loss)
        if improved:
            self.best_val_loss = val_loss
        return improved

    def record_watched(self, metric: str, value: float):
        """Count an evaluation of early stopping's metric (its value as measured: lower is
        better for a *_loss, higher for an accuracy) after `step` updates: from its value at
        step 0, evals_without_improvement counts the evaluations since its last best. A NaN
        is never a best; a metric other than the one watched so far starts the count afresh."""
        value = value if metric.endswith("_loss") else -value  # as a loss: lower is better
        if self.step == 0:  # the baseline
            self.watched, self.best_watched = metric, value if math.isfinite(value) else math.inf
            return
        if metric != self.watched:
            self.watched, self.best_watched, self.evals_without_improvement = metric, math.inf, 0
        better = math.isfinite(value) and value < self.best_watched
        if better:
            self.best_watched = value
        self.evals_without_improvement = 0 if better else self.evals_without_improvement + 1

    def patience_spent(self, patience: int) -> bool:
        """Early stopping: `patience` evaluations in a row without a best (0: never stop)."""
        return 0 < patience <= self.evals_without_improvement
