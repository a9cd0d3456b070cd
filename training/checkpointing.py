"""Checkpoint policy, in one place: when a run saves, which saves it skips, what it keeps,
best_model.pt, and whether the disk can hold it all. Beside it, storage/checkpoint.py is the
file format: what a checkpoint holds, its digest, writing, loading and finding one (torchtitan
splits its checkpoint manager from the format the same way).

- cadence: a step checkpoint every save_interval, at save_steps and at the end, and where a
  run that stops saves where it stops (stopping.Stop.saves_where_it_stops);
- the streak rule: no step checkpoint while the last steps were non-finite or diverging: a
  checkpoint is somewhere to go back to, and that state is not;
- rotation: keep_last step checkpoints; before a save, one fewer (never none), so that the
  space is there for it and a save that fails still leaves one to resume from;
- best_model.pt: a hard link to the step checkpoint of the same state, else a save of its own;
- space: at the start a warning when the disk cannot hold what the run keeps, and after a
  save that fails on a full disk, advice sized for the rest of the run.
"""

import os
import shutil

from parallel import distributed
from storage import checkpoint as ckpt
from storage.atomic_files import atomic_path
from training.stopping import Stop

# At its peak a run folder holds its kept step checkpoints, best_model.pt and one more file being
# written: an atomic save writes beside the file it replaces, and best_model.pt is rewritten
# while the step checkpoints are all there.
EXTRA_FILES_AT_PEAK = 2


def save_scheduled(cfg, step: int) -> bool:
    """A step checkpoint is due after `step` updates: every save_interval, at save_steps and at
    the end (save_interval 0: never). cfg: a TrainConfig."""
    return cfg.save_interval > 0 and (
        step % cfg.save_interval == 0 or step in cfg.save_steps or step >= cfg.max_steps
    )


def saves_after(cfg, step: int) -> int:
    """How many step checkpoints the schedule saves after `step` updates, up to max_steps
    (counted, not looped over: a run may have millions of steps)."""
    if cfg.save_interval <= 0 or step >= cfg.max_steps:
        return 0
    on_interval = cfg.max_steps // cfg.save_interval - step // cfg.save_interval
    extra = {s for s in cfg.save_steps if step < s <= cfg.max_steps and s % cfg.save_interval}
    end = cfg.max_steps % cfg.save_interval != 0 and cfg.max_steps not in extra
    return on_interval + len(extra) + end


def keep_last_that_fits(room: float, size: float) -> int | None:
    """The largest keep_last whose peak (those step checkpoints, best_model.pt and one being
    written, `size` bytes each) fits in `room` bytes; None when not even one fits. The one
    rule behind the start-up warning and the advice after a full disk, so that both agree."""
    fits = int(room // (size * ckpt.FILE_OVERHEAD)) - EXTRA_FILES_AT_PEAK
    return fits if fits >= 1 else None


def bytes_held(run_dir: str) -> int:
    """Disk bytes of a run folder's step checkpoints and best_model.pt, a file linked under
    two names counted once: the space that rotation reuses."""
    best = os.path.join(run_dir, ckpt.BEST_FILE)
    files = [p for _, p in ckpt.step_checkpoints(run_dir)] + ([best] if os.path.isfile(best) else [])
    return sum({(st.st_dev, st.st_ino): st.st_size for st in map(os.stat, files)}.values())


def link_best(step_path: str):
    """best_model.pt as the step checkpoint just written with the same state: a hard link,
    so it takes no second copy of the space (a copy where the filesystem has no links)."""
    best = os.path.join(os.path.dirname(step_path), ckpt.BEST_FILE)
    with atomic_path(best) as tmp:
        try:
            os.link(step_path, tmp)
        except OSError:
            shutil.copyfile(step_path, tmp)


def rotate(run_dir: str, keep_last: int, before_a_save: bool = False):
    """Delete all but the newest keep_last step checkpoints (best_model.pt stays; 0 keeps
    all). Before a save, keep one fewer, but never none."""
    if keep_last > 0:
        keep = max(keep_last - 1, 1) if before_a_save else keep_last
        for _, path in ckpt.step_checkpoints(run_dir)[:-keep]:
            os.remove(path)


class CheckpointManager:
    """The checkpoints of one run: built from its (resolved) config, the processes' Dist and
    the run's Reporter. Every rank calls it at the same points; rank 0 alone writes."""

    def __init__(self, cfg, env: distributed.Dist, reporter):
        self.cfg, self.env, self.reporter = cfg, env, reporter
        self.run_dir = cfg.run_dir

    # ---- cadence ----------------------------------------------------------------------------

    def should_save(self, step: int, stop: Stop | None = None) -> bool:
        """A step checkpoint after `step` updates: on the schedule (save_scheduled), and where a
        run that stops saves where it stops (preempted, early stopping)."""
        return save_scheduled(self.cfg, step) or (
            self.cfg.save_interval > 0 and stop is not None and stop.saves_where_it_stops
        )

    # ---- the start of a launch ----------------------------------------------------------------

    def start(self, step: int, checkpoint_bytes: int):
        """Rank 0, before training: drop the temp files of a save a kill interrupted, keep no
        more than keep_last from the start, and warn when the disk cannot hold what the run
        will keep (checkpoint_bytes: one checkpoint's size, memory.checkpoint_bytes)."""
        for path in ckpt.stale_temp_files(self.run_dir):
            os.remove(path)
        rotate(self.run_dir, self.cfg.keep_last)
        warning = self.space_warning(step, checkpoint_bytes)
        if warning:
            self.reporter.print(warning)

    def space_warning(self, step: int, size: int) -> str | None:
        """A warning when the disk of the run folder cannot hold the checkpoints the rest of the
        run keeps, after `step` updates (None when it can)."""
        room, need, kept = self._room(), *self._peak(step, size)
        if need <= room:
            return None
        return (
            f"warning: {self.run_dir} has room for {ckpt.format_bytes(room)} of checkpoints but this run "
            f"keeps {kept} step checkpoint{'s' * (kept != 1)}, best_model.pt and one being written, "
            f"{ckpt.format_bytes(size)} each ({ckpt.format_bytes(need)}): a save will fail when the disk "
            f"fills; {self._room_fix(step, size, room, need, resume=False)}"
        )

    # ---- saving ---------------------------------------------------------------------------------

    def after_step(self, state, stop: Stop | None, watch, improved: bool, contents):
        """Save what is due after state.step updates: a step checkpoint (should_save), unless
        the last steps were non-finite or diverging (watch: step_stats.StepWatch); and
        best_model.pt when this step's evaluation improved. contents(): the checkpoint's dict,
        gathered whole to rank 0 (every rank takes part)."""
        step_path = None
        if self.should_save(state.step, stop):
            if watch.streak:
                what = (
                    "not finite" if watch.nonfinite_streak else "far above the steps before them (diverging)"
                )
                self.reporter.print(
                    f"step {state.step:,}: not saving {ckpt.step_file(state.step)}: the last steps' "
                    f"losses were {what}"
                )
            else:
                step_path = self._save(ckpt.step_file(state.step), state, contents)
        if improved and step_path is None:
            self._save(ckpt.BEST_FILE, state, contents)
        elif improved:  # the same state: no second copy on disk
            if self.env.master:
                link_best(step_path)
                best = os.path.join(self.run_dir, ckpt.BEST_FILE)
                self.reporter.checkpoint(state.step, best, True, state.elapsed_s)
            distributed.barrier(self.env)

    def _save(self, name: str, state, contents) -> str:
        """Write one checkpoint (rank 0; every rank gathers and waits for it); its path. A step
        checkpoint first deletes those keep_last no longer keeps, so the space is there for it."""
        obj = contents()
        path = os.path.join(self.run_dir, name)
        if self.env.master:
            step_file = ckpt.is_step_file(name)
            if step_file:
                rotate(self.run_dir, self.cfg.keep_last, before_a_save=True)
            try:
                ckpt.save_checkpoint(obj, path)
            except ckpt.CheckpointWriteError as e:
                raise e.with_fix(self._write_fix(e, state.step, step_file)) from e.__cause__
            if step_file:
                rotate(self.run_dir, self.cfg.keep_last)
            self.reporter.checkpoint(state.step, path, name == ckpt.BEST_FILE, state.elapsed_s)
        distributed.barrier(self.env)
        return path

    # ---- space ----------------------------------------------------------------------------------

    def _room(self) -> int:
        """Bytes the run's checkpoints may use: the free space, and the space of the run's own
        checkpoints, which rotation reuses."""
        return shutil.disk_usage(self.run_dir).free + bytes_held(self.run_dir)

    def _peak(self, step: int, size: int, saving_now: bool = False) -> tuple[int, int]:
        """(bytes at the peak of the rest of the run, step checkpoints kept then), after `step`
        updates; saving_now: the save at `step` is still to be written."""
        files = len(ckpt.step_checkpoints(self.run_dir)) + saves_after(self.cfg, step) + saving_now
        kept = min(self.cfg.keep_last, files) if self.cfg.keep_last else files
        return int((kept + EXTRA_FILES_AT_PEAK) * size * ckpt.FILE_OVERHEAD), kept

    def _room_fix(self, step: int, size: int, room: int, need: int, resume: bool) -> str:
        """What makes the rest of the run fit, each option whole when followed: a keep_last that
        fits, freeing the space the rest of the run still lacks (need - room), or another
        --out_dir; on a disk too small for even one checkpoint, only the last. resume: the run
        stopped, and the advice says how it goes on."""
        total = shutil.disk_usage(self.run_dir).total
        one = int((1 + EXTRA_FILES_AT_PEAK) * size * ckpt.FILE_OVERHEAD)  # keep_last=1's peak
        if one > total:
            return (
                f"that disk ({ckpt.format_bytes(total)} in all) cannot hold one checkpoint, best_model.pt "
                f"and one being written ({ckpt.format_bytes(one)}): {self._elsewhere(resume, one)}"
            )
        fits = keep_last_that_fits(room, size)
        options = []
        if fits is None:
            one_only = " and set --keep_last=1" if self.cfg.keep_last != 1 else ""
            options.append(f"free at least {ckpt.format_bytes(one - room)} there{one_only}")
        elif not self.cfg.keep_last or fits < self.cfg.keep_last:
            options.append(
                f"set --keep_last={fits} (it fits: older step checkpoints are deleted before each save)"
            )
        if fits is not None and need <= total:
            older = [p for _, p in ckpt.step_checkpoints(self.run_dir)][:-1] if not self.cfg.keep_last else []
            held = (
                f" (this run's {len(older)} older step checkpoints, {os.path.basename(older[0])} to "
                f"{os.path.basename(older[-1])}, hold {ckpt.format_bytes(sum(map(os.path.getsize, older)))} of it)"
                if older
                else ""
            )
            options.append(f"free {ckpt.format_bytes(need - room)} there for the rest of the run{held}")
        if not options:
            return self._elsewhere(resume)
        fix = " or ".join(options) + (f", then {self._go_on()}" if resume else "")
        return f"{fix}; or {self._elsewhere(resume)}"

    def _elsewhere(self, resume: bool, at_least: int = 0) -> str:
        """Another --out_dir (with at_least bytes free), and how the run goes on there."""
        room = f" with at least {ckpt.format_bytes(at_least)} free" if at_least else ""
        if not resume:
            return f"pick another --out_dir{room}"
        if ckpt.step_checkpoints(self.run_dir):
            return f"copy {self.run_dir} to a disk{room or ' with more room'} and continue there with --out_dir and --resume"
        return f"pick another --out_dir{room} and run the same command there"

    def _go_on(self) -> str:
        """How a run that stopped goes on: from its newest step checkpoint, or from the start."""
        if ckpt.step_checkpoints(self.run_dir):
            return "continue with --resume"
        return "run the same command again (no step checkpoint was saved: it starts from step 0)"

    def _write_fix(self, error: ckpt.CheckpointWriteError, step: int, step_file: bool) -> str:
        """The advice after a failed save at `step`: on a full disk, sized for the rest of the
        run (this save and every later one, keep_last, best_model.pt)."""
        if not error.disk_full:
            return f"remove the cause ({error.reason}), then {self._go_on()}"
        room = self._room()
        need, _ = self._peak(step, error.need, saving_now=step_file)
        lacking_now = int(error.need * ckpt.FILE_OVERHEAD) - error.free  # what this save alone lacked
        return self._room_fix(step, error.need, room, max(need, room + lacking_now), resume=True)
