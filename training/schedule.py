"""The learning-rate schedule: a pure function of the step, so resume needs no state.

cosine (the default): warmup, then a cosine from the peak down to min_lr at decay_steps.
wsd (warmup-stable-decay): warmup, the peak held constant, then a linear decay to min_lr
over the last decay_fraction of decay_steps. Until its decay starts, a wsd run's schedule
does not depend on how long the run is planned to be, so a checkpoint of its constant stage
can be resumed with a larger max_steps and train exactly as a run planned that long.
"""

import math

SCHEDULES = ("cosine", "wsd")


def lr_at(
    step: int,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    decay_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Linear warmup from lr / (warmup_steps + 1) to lr at warmup_steps (never 0: a zero
    first step wastes a batch), then the schedule's decay to min_lr at decay_steps, flat after."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    if schedule == "wsd":
        decay_start = wsd_decay_start(warmup_steps, decay_steps, decay_fraction)
        if step < decay_start:
            return lr
        return lr + (min_lr - lr) * (step - decay_start) / max(1, decay_steps - decay_start)
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def wsd_decay_start(warmup_steps: int, decay_steps: int, decay_fraction: float) -> int:
    """The first step of a wsd schedule's decay stage (its constant stage ends before it)."""
    return max(warmup_steps, decay_steps - round(decay_fraction * decay_steps))
