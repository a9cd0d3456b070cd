"""Each step's numbers on the host, and what they say about the run.

HostCopies brings a step's loss, gradient norm and applied flag to the host without
stalling the GPU: it copies them as the step is queued and reads them one step later,
when the GPU has long finished them (on a CPU they are ready at once). StepWatch turns
those numbers into the run's health: skipped steps, a streak of non-finite steps or of
losses far above their level (divergence) that stops the run, and loss spikes worth
finding again. Throughput measures tokens/s
between log lines, leaving out evaluations and saves.
"""

import collections
import contextlib
import dataclasses
import math
import time
import typing

import torch

from training.stopping import Stop

SPIKE_WINDOW = 100  # steps whose mean loss a spike is compared with
SPIKE_MIN_HISTORY = 10  # a mean over fewer steps is too noisy to call anything a spike


class StepValues(typing.NamedTuple):
    """A step's numbers as train_step returns them: 0-d tensors on the device."""

    loss: torch.Tensor  # mean over the global batch (all ranks and micro-batches)
    grad_norm: torch.Tensor  # before clipping
    applied: torch.Tensor  # 1.0 when the update was applied, 0.0 when skipped


@dataclasses.dataclass
class StepResult:
    """A step's numbers on the host. step: the step's index, which is also how many updates
    the weights had when its loss was measured."""

    step: int
    lr: float
    loss: float  # mean over the global batch (all ranks and micro-batches)
    grad_norm: float  # before clipping
    applied: bool  # False: the update was skipped (non-finite loss or gradients)


class HostCopies:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending = collections.deque()

    def push(self, step: int, lr: float, step_values: StepValues):
        """step_values: from train_step, on the device; copied to the host in one transfer."""
        values = torch.stack([v.float() for v in step_values])
        event = None
        if self.cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            values = host
        self.pending.append((step, lr, values, event))

    def pop(self, wait_for_all: bool) -> list[StepResult]:
        """Results in step order: all of them when wait_for_all (a log step: the host waits
        for the GPU), else all but the newest, which the GPU may still be computing."""
        out = []
        while len(self.pending) > (0 if wait_for_all else 1):
            step, lr, values, event = self.pending.popleft()
            if event is not None:
                event.synchronize()
            numbers = dict(zip(StepValues._fields, values.tolist()))
            out.append(StepResult(step, lr, numbers["loss"], numbers["grad_norm"], numbers["applied"] > 0))
        return out

    @property
    def newest_step(self) -> int | None:
        """The index of the newest step pushed and not yet popped."""
        return self.pending[-1][0] if self.pending else None


class StepWatch:
    """Reads each StepResult in order; every rank sees the same numbers, so every rank
    reaches the same decision to stop."""

    def __init__(
        self,
        max_nonfinite: int,
        spike_factor: float,
        loss_scaling: bool,
        divergence_factor: float = 0.0,
        divergence_steps: int = 10,
    ):
        self.max_nonfinite = max_nonfinite
        self.spike_factor = spike_factor
        self.divergence_factor, self.divergence_steps = divergence_factor, divergence_steps
        # fp16's GradScaler finds its scale by overflowing now and then: an inf gradient
        # norm with a finite loss is that search, not a broken run.
        self.loss_scaling = loss_scaling
        self.recent = collections.deque(maxlen=SPIKE_WINDOW)
        self.nonfinite_streak: list[int] = []  # steps of the current run of non-finite steps
        # steps of the current run of losses over divergence_factor x the mean before them;
        # their losses stay out of `recent`, so that the level they are held to stays the same
        self.diverging: list[int] = []

    def check(self, r: StepResult) -> list[dict]:
        """Events worth a log record: a non-finite or skipped step, or a loss spike."""
        events = []
        overflow = self.loss_scaling and math.isfinite(r.loss)
        if not math.isfinite(r.loss) or (not math.isfinite(r.grad_norm) and not overflow):
            self.nonfinite_streak.append(r.step)
            events.append(
                dict(
                    kind="nonfinite",
                    step=r.step,
                    loss=_num(r.loss),
                    grad_norm=_num(r.grad_norm),
                    in_a_row=len(self.nonfinite_streak),
                )
            )
            return events
        self.nonfinite_streak = []
        if not r.applied:  # the fp16 loss scaler's overflow: skipped, and the scale halves
            events.append(dict(kind="skipped", step=r.step, loss=r.loss, grad_norm=_num(r.grad_norm)))
            return events
        mean = sum(self.recent) / len(self.recent) if self.recent else None
        if self.divergence_factor and mean is not None and r.loss > self.divergence_factor * mean:
            self.diverging.append(r.step)
            events.append(
                dict(
                    kind="diverging",
                    step=r.step,
                    loss=r.loss,
                    recent_mean=mean,
                    ratio=r.loss / mean,
                    in_a_row=len(self.diverging),
                )
            )
            return events
        self.diverging = []
        if self.spike_factor and len(self.recent) >= SPIKE_MIN_HISTORY:
            if r.loss > self.spike_factor * mean:
                events.append(
                    dict(kind="spike", step=r.step, loss=r.loss, recent_mean=mean, ratio=r.loss / mean)
                )
        self.recent.append(r.loss)
        return events

    @property
    def broken(self) -> Stop | None:
        """Stop.NONFINITE or Stop.DIVERGED once a streak is long enough to stop the run."""
        if len(self.nonfinite_streak) >= self.max_nonfinite:
            return Stop.NONFINITE
        if self.divergence_factor and len(self.diverging) >= self.divergence_steps:
            return Stop.DIVERGED
        return None

    @property
    def streak(self) -> list[int]:
        """The steps of the streak under way (non-finite, or diverging), if any: no checkpoint
        is saved from such a state."""
        return self.nonfinite_streak or self.diverging


def describe_event(event: dict) -> str:
    """The log line for an event from StepWatch.check."""
    kind, head = event["kind"], f"step {event['step']:,}: "
    if kind == "nonfinite":
        return (
            head + f"loss {event['loss']}, grad norm {event['grad_norm']}: update not applied "
            f"({event['in_a_row']} in a row)"
        )
    if kind == "skipped":
        return head + "gradients overflowed in fp16: update skipped, loss scale lowered"
    if kind == "diverging":
        return (
            head + f"loss {event['loss']:.4g} is {event['ratio']:.3g} x the mean of the steps before it "
            f"({event['recent_mean']:.4f}): diverging ({event['in_a_row']} in a row)"
        )
    return (
        head + f"loss spike: {event['loss']:.4f} is {event['ratio']:.2f} x the mean of the "
        f"steps before it ({event['recent_mean']:.4f})"
    )


def _num(x: float):
    # JSON has no NaN or Infinity: write them as strings a reader recognizes
    return x if math.isfinite(x) else str(x)


class Throughput:
    """Tokens per second of training between two log lines."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock  # seconds, monotonic
        self.start = clock()
        self.tokens = 0
        self.excluded = 0.0

    def add(self, tokens: int):
        self.tokens += tokens

    @contextlib.contextmanager
    def excluding(self):
        """Time spent inside (evaluations, saves) is not training time."""
        t = self.clock()
        try:
            yield
        finally:
            self.excluded += self.clock() - t

    def rate(self) -> float | None:
        """Tokens/s since the last call (None if no tokens), then start a new interval."""
        now = self.clock()
        seconds = max(now - self.start - self.excluded, 1e-9)
        tokens, self.tokens, self.start, self.excluded = self.tokens, 0, now, 0.0
        return tokens / seconds if tokens else None
