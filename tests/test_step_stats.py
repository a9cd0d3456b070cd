import math

import torch

from training.step_stats import HostCopies, StepResult, StepValues, StepWatch, Throughput, describe_event
from training.stopping import Stop


def values(loss, grad_norm, applied):
    return StepValues(
        loss=torch.tensor(loss), grad_norm=torch.tensor(grad_norm), applied=torch.tensor(applied)
    )


def result(step, loss, grad_norm=1.0, applied=True):
    return StepResult(step, 1e-3, loss, grad_norm, applied)


def test_host_copies_come_out_in_order_one_step_behind_unless_waited_for():
    copies = HostCopies(torch.device("cpu"))
    copies.push(0, 0.1, values(3.0, 1.5, 1.0))
    assert copies.pop(wait_for_all=False) == []  # the newest may still be on the device
    copies.push(1, 0.2, values(float("nan"), float("nan"), 0.0))
    assert copies.newest_step == 1  # the step a log decision is about
    (r0,) = copies.pop(wait_for_all=False)
    assert (r0.step, r0.lr, r0.loss, r0.grad_norm, r0.applied) == (0, 0.1, 3.0, 1.5, True)
    (r1,) = copies.pop(wait_for_all=True)
    assert r1.step == 1 and math.isnan(r1.loss) and r1.applied is False


def test_a_streak_of_non_finite_steps_stops_the_run_and_a_good_step_resets_it():
    watch = StepWatch(max_nonfinite=3, spike_factor=0, loss_scaling=False)
    for step in range(2):
        assert watch.check(result(step, float("nan"), float("nan"), False))[0]["kind"] == "nonfinite"
    assert watch.broken is None
    watch.check(result(2, 2.0))
    assert watch.nonfinite_streak == []
    events = [watch.check(result(s, 2.0, float("inf"), False)) for s in (3, 4, 5)]
    assert watch.broken is Stop.NONFINITE and watch.nonfinite_streak == [3, 4, 5]
    assert [e[0]["in_a_row"] for e in events] == [1, 2, 3]
    assert "update not applied (3 in a row)" in describe_event(events[-1][0])


def test_fp16_overflow_is_a_skipped_step_not_a_broken_run():
    watch = StepWatch(max_nonfinite=2, spike_factor=0, loss_scaling=True)
    for step in range(5):  # the scaler halving its scale: inf gradients, finite loss
        assert watch.check(result(step, 3.0, float("inf"), False))[0]["kind"] == "skipped"
    assert watch.broken is None
    watch.check(result(5, float("nan"), float("nan"), False))  # a NaN loss is not an overflow
    watch.check(result(6, float("nan"), float("nan"), False))
    assert watch.broken is Stop.NONFINITE


def test_loss_spikes_are_flagged_against_the_recent_mean():
    early = StepWatch(max_nonfinite=3, spike_factor=1.5, loss_scaling=False)
    early.check(result(0, 3.0))
    assert early.check(result(1, 100.0)) == []  # too little history to call anything a spike
    watch = StepWatch(max_nonfinite=3, spike_factor=1.5, loss_scaling=False)
    for step in range(30):
        assert watch.check(result(step, 3.0 if step % 2 else 3.2)) == []
    (spike,) = watch.check(result(30, 5.0))
    assert spike["kind"] == "spike" and spike["step"] == 30 and spike["ratio"] > 1.5
    assert "loss spike" in describe_event(spike)
    assert watch.check(result(31, 3.1)) == []


def test_throughput_leaves_out_evaluations_and_saves():
    now = [100.0]
    meter = Throughput(clock=lambda: now[0])
    meter.add(1000)
    now[0] += 2.0  # training
    with meter.excluding():
        now[0] += 30.0  # an evaluation
    now[0] += 2.0
    meter.add(1000)
    assert meter.rate() == 2000 / 4.0  # the 30 s inside excluding() are not in the denominator
    assert meter.rate() is None  # a new interval with no tokens yet
    now[0] += 1.0
    meter.add(500)
    assert meter.rate() == 500 / 1.0  # from the last rate() on, nothing excluded carried over


def test_a_loss_that_stays_far_above_its_level_is_divergence_and_a_return_resets_it():
    watch = StepWatch(
        max_nonfinite=3, spike_factor=1.5, loss_scaling=False, divergence_factor=3.0, divergence_steps=3
    )
    for step in range(20):
        watch.check(result(step, 2.0))
    events = watch.check(result(20, 7.0))  # 3.5 x the level: diverging, not a spike
    assert [e["kind"] for e in events] == ["diverging"] and events[0]["recent_mean"] == 2.0
    watch.check(result(21, 9.0))
    assert watch.broken is None and watch.streak == [20, 21]
    watch.check(result(22, 2.1))  # back near its level: the streak ends
    assert watch.streak == [] and watch.broken is None
    for step in range(23, 26):  # the level the streak is held to is the one before it
        watch.check(result(step, 6.5 + step))
    assert watch.broken is Stop.DIVERGED and watch.diverging == [23, 24, 25]
    assert describe_event(watch.check(result(26, 40.0))[0]).startswith("step 26: loss 40 is ")


def test_one_step_of_history_is_enough_to_call_a_wrecked_run_diverged():
    """lr 1e6: step 0's update is finite and wrecks the weights; step 1's loss is 1e9."""
    watch = StepWatch(
        max_nonfinite=10, spike_factor=1.5, loss_scaling=False, divergence_factor=3.0, divergence_steps=2
    )
    watch.check(result(0, 4.48))
    watch.check(result(1, 3.6e9))
    watch.check(result(2, 2.1e9))
    assert watch.broken is Stop.DIVERGED
    off = StepWatch(max_nonfinite=10, spike_factor=1.5, loss_scaling=False, divergence_factor=0)
    for step, loss in enumerate([4.48, 3.6e9, 2.1e9, 5e9]):
        off.check(result(step, loss))
    assert off.broken is None  # divergence_factor=0 turns it off
