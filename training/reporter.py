"""What a training run tells its user while it runs: the records of metrics.jsonl and
TensorBoard (metrics.RunLog), the lines it prints (through the progress bar when there is
one), and the throughput meter behind each step record's tokens/s and MFU.

Every rank makes a Reporter and calls it at the same points; only rank 0's writes or
prints anything (`writes`), so the loop needs no rank check of its own to report.
"""

import math
import resource
import sys

import torch

from errors import UserError
from parallel.devices import peak_flops
from training.metrics import RunLog
from training.report import write_report
from training.step_stats import StepResult, Throughput, describe_event


class Reporter:
    def __init__(
        self, cfg, env, tokens_per_step: int, flops_per_token: int, scaler, start_step: int, resumed: bool
    ):
        """cfg: the resolved TrainConfig (run_dir, cadences, tensorboard, progress_bar);
        env: distributed.Dist. A resumed run re-runs the steps after its checkpoint, so
        TensorBoard drops what the launch before logged from there on."""
        self.cfg, self.env, self.scaler = cfg, env, scaler
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.writes = env.master
        self.peak = peak_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
        self.meter = Throughput()
        self.log = (
            RunLog(
                cfg.run_dir,
                cfg.tensorboard,
                purge_step=start_step + 1 if resumed else None,
                wandb_project=cfg.wandb_project,
                run_name=cfg.run_name,
                config=cfg.to_dict(),
            )
            if self.writes
            else None
        )
        self.bar = None
        if self.writes and cfg.progress_bar and sys.stderr.isatty():  # in a log file, redraws bury the lines
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def print(self, line: str):
        """A line for the user, above the progress bar when there is one."""
        if not self.writes:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def record(self, record: dict):
        """One metrics.jsonl record (and its numbers in TensorBoard)."""
        if self.writes:
            self.log.log(record)

    def paused(self):
        """A context whose time (evaluations, saves) is not training time."""
        return self.meter.excluding()

    def step(self, result: StepResult, events: list, skipped_steps: int, elapsed_s: float):
        """One finished step, in order: its events (non-finite, skipped, spikes) always, and
        on a log step (TrainConfig.should_log) its record and line."""
        self.meter.add(self.tokens_per_step)
        if not self.writes:
            return
        if self.bar is not None:
            self.bar.update(1)
        for event in events:
            self.record(event)
            self.print(describe_event(event))
        if not self.cfg.should_log(result.step):
            return
        tok_s = self.meter.rate()
        mfu = self.flops_per_token * tok_s / (self.peak * self.env.world) if self.peak and tok_s else None
        mem = (
            torch.cuda.max_memory_allocated(self.env.device)
            if self.env.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        ) / 2**30
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.record(
            dict(
                kind="train",
                step=result.step,
                loss=result.loss,
                lr=result.lr,
                grad_norm=result.grad_norm,
                applied=result.applied,
                tokens_per_s=tok_s,
                mfu=mfu,
                peak_mem_gib=mem,
                loss_scale=scale,
                skipped_steps=skipped_steps,
                tokens=result.step * self.tokens_per_step,
                elapsed_s=elapsed_s,
            )
        )
        self.print(
            " | ".join(
                [
                    f"step {result.step:,}/{self.cfg.max_steps:,}",
                    f"loss {result.loss:.4f}",
                    f"lr {result.lr:.2e}",
                    f"grad {result.grad_norm:.3f}",
                    f"{tok_s:,.0f} tok/s" if tok_s else "- tok/s",
                    f"mfu {mfu:.1%}" if mfu is not None else "mfu n/a",
                    f"mem {mem:.2f} GiB",
                ]
                + ([f"scale {scale:.0f}, skipped {skipped_steps}"] if scale else [])
            )
        )

    def evaluation(self, step: int, val: float, train: float, improved: bool, elapsed_s: float, extra: dict):
        """extra: more numbers of the evaluation (each dataset's val loss, task accuracies)."""
        ppl = math.exp(min(val, 50))
        self.record(
            dict(
                kind="eval",
                step=step,
                val_loss=val,
                val_ppl=ppl,
                train_loss=train,
                elapsed_s=elapsed_s,
                **extra,
            )
        )
        self.print(
            f"step {step:,}: val loss {val:.4f} (ppl {ppl:.2f}) | train loss {train:.4f}"
            + "".join(f" | {k} {v:.4f}" for k, v in extra.items())
            + (" | best" if improved else "")
        )

    def checkpoint(self, step: int, path: str, best: bool, elapsed_s: float):
        self.record(dict(kind="checkpoint", step=step, path=path, best=best, elapsed_s=elapsed_s))

    def end(self, step: int, elapsed_s: float, reason: str, message: str):
        """The end record, then the closing message and report.md."""
        if not self.writes:
            return
        self.record(dict(kind="end", step=step, elapsed_s=elapsed_s, reason=reason))
        self.close()
        try:
            report = write_report(self.cfg.run_dir)
        except UserError as e:  # the run is done: what its report lacks is no reason to fail it
            report = f"not written: {e}"
        print(f"{message}\nreport: {report}", flush=True)

    def close(self):
        """Close the log and the bar (again: a no-op)."""
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()
