"""Checkpoint policy (training/checkpointing.py): the cadence, saves on a stop, the streak
rule, rotation, the best link, and the disk-space warning and advice, on real files."""

import os
import re
import shutil

import pytest
import torch
from conftest import tmpfs

from parallel.distributed import Dist
from storage import checkpoint as ckpt
from training import checkpointing
from training.checkpointing import CheckpointManager, keep_last_that_fits, saves_after
from training.config import TrainConfig
from training.state import TrainState
from training.stopping import Stop


class Lines:
    """A Reporter's two methods the manager calls, keeping what they got."""

    def __init__(self):
        self.printed, self.saved = [], []

    def print(self, line):
        self.printed.append(line)

    def checkpoint(self, step, path, best, elapsed_s):
        self.saved.append((step, os.path.basename(path), best))


class Watch:
    """step_stats.StepWatch's streaks, set by hand."""

    def __init__(self, nonfinite=(), diverging=()):
        self.nonfinite_streak, self.diverging = list(nonfinite), list(diverging)

    @property
    def streak(self):
        return self.nonfinite_streak or self.diverging


def manager(run_dir, **settings) -> CheckpointManager:
    out_dir, run_name = os.path.split(str(run_dir))
    os.makedirs(run_dir, exist_ok=True)
    cfg = TrainConfig(out_dir=out_dir, run_name=run_name, **settings)
    return CheckpointManager(cfg, Dist(), Lines())


def save_steps(m, steps, size=100_000, improved=()):
    """Run the manager's saves after each of steps, with a checkpoint of size float32s."""
    for step in steps:
        state = TrainState(step=step)
        contents = lambda step=step: {"step": step, "model": {"w": torch.full((size,), float(step))}}
        m.after_step(state, None, Watch(), step in improved, contents)


def test_the_cadence_and_the_stops_that_save(tmp_path):
    m = manager(tmp_path / "r", max_steps=100, save_interval=40, save_steps=(10,))
    assert [s for s in range(101) if m.should_save(s)] == [0, 10, 40, 80, 100]
    assert m.should_save(7, Stop.PREEMPTED) and m.should_save(7, Stop.EARLY_STOPPING)
    assert (
        not m.should_save(7, Stop.NONFINITE) and not m.should_save(7, Stop.DIVERGED) and not m.should_save(7)
    )
    bench = manager(tmp_path / "b", max_steps=100, save_interval=0)  # benchmarks: never
    assert not any(bench.should_save(s, Stop.PREEMPTED) for s in range(101))


@pytest.mark.parametrize(
    "interval,extra,max_steps",
    [(40, (10,), 100), (40, (10, 40, 100, 300), 100), (7, (), 7), (3, (5, 9), 20), (1, (), 12), (50, (), 10)],
)
def test_the_saves_left_are_counted_as_the_schedule_saves_them(tmp_path, interval, extra, max_steps):
    cfg = TrainConfig(max_steps=max_steps, save_interval=interval, save_steps=extra)
    for step in range(max_steps + 1):
        scheduled = [s for s in range(step + 1, max_steps + 1) if checkpointing.save_scheduled(cfg, s)]
        assert saves_after(cfg, step) == len(scheduled), step
    big = TrainConfig(max_steps=10**12, save_interval=1000)  # counted, not looped over
    assert saves_after(big, 10**11) == 9 * 10**8


def test_a_streak_is_never_saved_and_says_why(tmp_path):
    m = manager(tmp_path / "r", max_steps=10, save_interval=1)
    state = TrainState(step=4)
    m.after_step(state, None, Watch(diverging=[3, 4]), False, lambda: pytest.fail("gathered"))
    m.after_step(state, Stop.NONFINITE, Watch(nonfinite=[4]), False, lambda: pytest.fail("gathered"))
    assert ckpt.step_checkpoints(m.run_dir) == []
    assert m.reporter.printed == [
        "step 4: not saving checkpoint_step_4.pt: the last steps' losses were far above the steps "
        "before them (diverging)",
        "step 4: not saving checkpoint_step_4.pt: the last steps' losses were not finite",
    ]


def test_rotation_keeps_the_newest_and_best_links_the_step_checkpoint(tmp_path):
    m = manager(tmp_path / "r", max_steps=6, save_interval=1, keep_last=2)
    save_steps(m, range(1, 7), size=10, improved=(2, 3))
    assert [s for s, _ in ckpt.step_checkpoints(m.run_dir)] == [5, 6]
    best = os.path.join(m.run_dir, ckpt.BEST_FILE)
    assert ckpt.load_checkpoint(best)["step"] == 3  # its step file rotated away; the link keeps it
    assert (3, ckpt.BEST_FILE, True) in m.reporter.saved
    save_steps(manager(tmp_path / "r", max_steps=8, save_interval=1, keep_last=2), [7], size=10, improved=[7])
    assert os.path.samefile(best, os.path.join(m.run_dir, ckpt.step_file(7)))
    # a best between step checkpoints is a save of its own
    save_steps(
        manager(tmp_path / "r", max_steps=20, save_interval=10, keep_last=2), [8], size=10, improved=[8]
    )
    assert ckpt.load_checkpoint(best)["step"] == 8 and not os.path.exists(
        os.path.join(m.run_dir, "checkpoint_step_8.pt")
    )


def test_the_start_drops_temp_files_and_rotates(tmp_path):
    m = manager(tmp_path / "r", max_steps=10, save_interval=1, keep_last=3)
    for step in range(1, 6):
        ckpt.save_checkpoint({"step": step}, os.path.join(m.run_dir, ckpt.step_file(step)))
    stale = os.path.join(m.run_dir, ".checkpoint_step_6.pt.tmp.12345")
    open(stale, "w").close()
    m.start(5, 1000)
    assert not os.path.exists(stale) and [s for s, _ in ckpt.step_checkpoints(m.run_dir)] == [3, 4, 5]
    assert m.reporter.printed == []  # room enough: no warning


def test_space_warning_names_a_keep_last_that_fits(tmp_path):
    """Keeping every one of 10 saves cannot fit; --keep_last=3 can (5 checkpoints' room: 3,
    best_model.pt and one being written)."""
    free = shutil.disk_usage(tmp_path).free
    size = int(free / 5.5 / ckpt.FILE_OVERHEAD)
    assert manager(tmp_path / "a", max_steps=10, save_interval=1, keep_last=2).space_warning(0, size) is None
    warning = manager(tmp_path / "b", max_steps=10, save_interval=1).space_warning(0, size)
    assert (
        warning.startswith(f"warning: {tmp_path / 'b'} has room for")
        and "keeps 10 step checkpoints" in warning
    )
    assert "set --keep_last=3 (it fits" in warning and warning.endswith("or pick another --out_dir")
    followed = manager(tmp_path / "c", max_steps=10, save_interval=1, keep_last=3)
    assert followed.space_warning(0, size) is None  # the advice, followed
    assert keep_last_that_fits(free, size) == 3


def full_disk_error(m, steps, size) -> ckpt.CheckpointWriteError:
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        save_steps(m, steps, size)
    message = str(e.value)
    assert "the disk is full: No space left on device" in message and "\n" not in message
    return e.value


def filled_disk(disk, other_bytes):
    """Other files on the disk: other_bytes of them."""
    with open(os.path.join(disk, "other_files"), "wb") as fh:
        fh.write(b"x" * other_bytes)


def test_a_full_disk_advice_is_sized_for_the_rest_of_the_run_and_following_it_works(tmp_path):
    """A real ENOSPC on an 8 MB tmpfs that other files fill but for 2 MB, keeping every
    checkpoint of 12 saves: the advice names the space the rest of the run needs (not only
    this save's), or a keep_last that fits; either, followed, carries the run to its end."""
    for follow in ("keep_last", "free"):
        with tmpfs(tmp_path / follow, "size=8m") as disk:
            filled_disk(disk, 6 * 2**20)
            m = manager(os.path.join(disk, "r"), max_steps=12, save_interval=1)
            failed = str(full_disk_error(m, range(1, 13), 100_000))  # 400 kB a checkpoint
            step = int(re.search(r"checkpoint_step_(\d+)\.pt \(the disk", failed).group(1))
            freed = re.search(
                r"or free ([\d.]+) MB there for the rest of the run \(this run's \d+ older step checkpoints, "
                r"checkpoint_step_1\.pt to checkpoint_step_(\d+)\.pt, hold [\d.]+ MB of it\), then continue "
                r"with --resume; or copy .* to a disk with more room and continue there with --out_dir and --resume$",
                failed,
            )
            assert freed and int(freed.group(2)) == step - 2, failed
            keep = int(re.search(r"set --keep_last=(\d+) \(it fits", failed).group(1))
            if follow == "keep_last":
                m = manager(m.run_dir, max_steps=12, save_interval=1, keep_last=keep)
            else:
                filled_disk(disk, 6 * 2**20 - int(float(freed.group(1)) * 1e6) - 1)
            save_steps(m, range(step, 13), 100_000)  # the rest of the run
            kept = list(range(13 - keep, 13)) if follow == "keep_last" else list(range(1, 13))
            assert [s for s, _ in ckpt.step_checkpoints(m.run_dir)] == kept


def test_a_disk_too_small_for_one_checkpoint_names_another_out_dir(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        m = manager(os.path.join(disk, "r"), max_steps=4, save_interval=1)
        too_small = (
            "that disk (1.0 MB in all) cannot hold one checkpoint, best_model.pt and one being written "
            "(3.8 MB): pick another --out_dir with at least 3.8 MB free"
        )
        assert m.space_warning(0, 1_200_000).endswith(too_small)
        failed = full_disk_error(m, range(1, 5), 300_000)  # 1.2 MB: not even the first one fits
        assert str(failed).endswith(too_small + " and run the same command there"), str(failed)
    save_steps(manager(tmp_path / "r", max_steps=4, save_interval=1), range(1, 5), 300_000)  # followed
