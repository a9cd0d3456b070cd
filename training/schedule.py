"""The learning-rate schedule: a pure function of the step, so resume needs no state."""

import math


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Linear warmup from lr / (warmup_steps + 1) to lr at warmup_steps (never 0: a zero
    first step wastes a batch), cosine decay to min_lr at decay_steps, flat after."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
