import math

from training.state import TrainState


def test_the_best_val_loss_follows_finite_improvements_after_the_baseline():
    s = TrainState()
    assert s.record_val_loss(5.0) is False and s.best_val_loss == math.inf  # step 0: a baseline only
    s.step = 10
    assert s.record_val_loss(4.0) is True and s.best_val_loss == 4.0
    s.step = 20
    assert s.record_val_loss(float("nan")) is False and s.best_val_loss == 4.0  # NaN is never best
    assert s.record_val_loss(float("inf")) is False and s.best_val_loss == 4.0
    assert s.record_val_loss(4.0) is False  # equal is no improvement
    assert s.record_val_loss(3.9) is True and s.best_val_loss == 3.9


def test_a_best_is_never_worse_than_the_weights_the_run_started_from():
    s = TrainState()
    s.record_val_loss(4.48)  # step 0: untrained
    s.step = 1
    assert s.record_val_loss(3.49e9) is False and s.best_val_loss == math.inf  # a wrecked model is no best
    s.step = 2
    assert s.record_val_loss(4.5) is False and s.best_val_loss == math.inf
    assert s.record_val_loss(4.0) is True and s.best_val_loss == 4.0
    resumed = TrainState.from_checkpoint(s.state_dict())  # the baseline travels with the checkpoint
    assert resumed.baseline_val_loss == 4.48


def test_patience_counts_evaluations_since_the_last_best_and_is_spent_at_the_setting():
    s = TrainState()
    s.record_watched("val_loss", 5.0)  # step 0: the baseline
    s.step = 10
    s.record_watched("val_loss", 5.2)  # no better than the baseline
    assert s.evals_without_improvement == 1 and not s.patience_spent(2)
    s.record_watched("val_loss", float("nan"))  # NaN is never a best
    assert s.evals_without_improvement == 2 and s.patience_spent(2) and not s.patience_spent(3)
    assert not s.patience_spent(0)  # 0: early stopping is off
    s.record_watched("val_loss", 4.9)
    assert s.evals_without_improvement == 0 and not s.patience_spent(1)


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
    s.record_watched("val_loss", 3.5)  # 3.5 is no better than 3.0
    assert s.evals_without_improvement == 3


def test_early_stopping_can_watch_a_task_accuracy_where_higher_is_better():
    s = TrainState(step=10)
    s.record_watched("hellaswag_acc_norm_tokens", 0.30)
    assert s.evals_without_improvement == 0
    s.step = 20
    s.record_watched("hellaswag_acc_norm_tokens", 0.32)  # higher: a best
    assert s.evals_without_improvement == 0
    s.step = 30
    s.record_watched("hellaswag_acc_norm_tokens", 0.31)  # lower: patience counts
    s.record_watched("hellaswag_acc_norm_tokens", float("nan"))
    assert s.evals_without_improvement == 2 and s.best_watched == -0.32
    # the best model still follows the val loss alone
    assert s.record_val_loss(3.8) is True and s.best_val_loss == 3.8
    # switching the watched metric (a resumed run with another early_stopping_metric) starts afresh
    s.record_watched("val_loss", 3.7)
    assert s.evals_without_improvement == 0 and s.best_watched == 3.7
