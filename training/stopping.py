"""Why a run stops, and what each reason means: the process's exit status and whether the
run saves a checkpoint where it stopped. decide() is the one place a step's outcome becomes
a reason; train.py acts on it and checkpointing.CheckpointManager.should_save reads it."""

import enum

from parallel.preemption import EXIT_PREEMPTED


class Stop(enum.Enum):
    """The reasons, in order of precedence: when several hold after a step, the first wins."""

    NONFINITE = "nonfinite"  # too many non-finite steps in a row
    DIVERGED = "diverged"  # too many steps in a row with a loss far above its level before them
    PREEMPTED = "preempted"  # a preemption signal reached a rank
    MAX_STEPS = "max_steps"  # the run is done
    EARLY_STOPPING = "early_stopping"  # val loss stopped improving

    @property
    def exit_code(self) -> int:
        """A broken run fails the process; preemption asks a scheduler to requeue it."""
        return {Stop.NONFINITE: 1, Stop.DIVERGED: 1, Stop.PREEMPTED: EXIT_PREEMPTED}.get(self, 0)

    @property
    def saves_where_it_stops(self) -> bool:
        """A preempted or early-stopped run saves so it can resume there (max_steps is a save
        step anyway). A non-finite or diverged state is nothing to go back to: the last good
        checkpoint stays the last."""
        return self in (Stop.PREEMPTED, Stop.EARLY_STOPPING)


def decide(broken: "Stop | None", preempted: bool, at_max_steps: bool, patience_spent: bool) -> Stop | None:
    """Why the run stops after this step, or None to go on. broken: what the step numbers
    say (step_stats.StepWatch.broken: NONFINITE, DIVERGED or None)."""
    holds = {
        Stop.NONFINITE: broken is Stop.NONFINITE,
        Stop.DIVERGED: broken is Stop.DIVERGED,
        Stop.PREEMPTED: preempted,
        Stop.MAX_STEPS: at_max_steps,
        Stop.EARLY_STOPPING: patience_spent,
    }
    return next((reason for reason in Stop if holds[reason]), None)
