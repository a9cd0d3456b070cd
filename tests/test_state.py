import math

from training.state import TrainState


def test_evaluations_track_the_best_and_patience():
    s = TrainState()
    assert s.record_eval(5.0) is False and s.best_val_loss == math.inf  # step 0: a baseline only
    s.step = 10
    assert s.record_eval(4.0) is True and s.best_val_loss == 4.0
    s.step = 20
    assert s.record_eval(float("nan")) is False and s.best_val_loss == 4.0  # NaN is never best
    assert s.record_eval(float("inf")) is False and s.evals_without_improvement == 2
    assert s.record_eval(3.9) is True and s.evals_without_improvement == 0


def test_a_best_is_never_worse_than_the_weights_the_run_started_from():
    s = TrainState()
    s.record_eval(4.48)  # step 0: untrained
    s.step = 1
    assert s.record_eval(3.49e9) is False and s.best_val_loss == math.inf  # a wrecked model is no best
    s.step = 2
    assert s.record_eval(4.5) is False and s.evals_without_improvement == 2
    assert s.record_eval(4.0) is True and s.best_val_loss == 4.0
    resumed = TrainState.from_checkpoint(s.state_dict())  # the baseline travels with the checkpoint
    assert resumed.baseline_val_loss == 4.48


def test_round_trip_through_a_checkpoint_dict():
    s = TrainState(step=7, best_val_loss=2.5, evals_without_improvement=1, elapsed_s=12.5, skipped_steps=2)
    saved = {"model": {}, "optimizer": {}, **s.state_dict()}
    assert TrainState.from_checkpoint(saved) == s
    old = {
        "step": 3,
        "best_val_loss": 3.0,
        "evals_without_improvement": 0,
        "elapsed_s": 1.0,
    }  # no skipped_steps
    assert TrainState.from_checkpoint(old) == TrainState(
        step=3, best_val_loss=3.0, elapsed_s=1.0, best_watched=3.0
    )


def test_an_older_checkpoint_keeps_its_patience_on_the_val_loss():
    s = TrainState.from_checkpoint({"step": 30, "best_val_loss": 3.0, "evals_without_improvement": 2})
    assert s.record_eval(3.5) is False and s.evals_without_improvement == 3  # 3.5 is no better than 3.0


def test_early_stopping_can_watch_a_task_accuracy_while_the_best_model_follows_the_val_loss():
    s = TrainState(step=10)
    assert s.record_eval(4.0, "hellaswag_acc_norm_tokens", 0.30) is True and s.evals_without_improvement == 0
    s.step = 20  # val loss worse, accuracy better: no best model, patience reset
    assert s.record_eval(4.1, "hellaswag_acc_norm_tokens", 0.32) is False and s.evals_without_improvement == 0
    s.step = 30  # val loss better, accuracy worse: a best model, patience counts
    assert s.record_eval(3.9, "hellaswag_acc_norm_tokens", 0.31) is True and s.evals_without_improvement == 1
    assert (
        s.record_eval(3.8, "hellaswag_acc_norm_tokens", float("nan")) is True
        and s.evals_without_improvement == 2
    )
    assert (s.best_val_loss, s.best_watched) == (3.8, -0.32)
    # switching the watched metric (a resumed run with another early_stopping_metric) starts afresh
    assert (
        s.record_eval(3.7, "val_loss") is True and s.evals_without_improvement == 0 and s.best_watched == 3.7
    )
