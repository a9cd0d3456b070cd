"""Train a GPT on a CPU, one GPU, or many GPUs (torchrun), with exact resume.

    python train.py config/shakespeare_cpu.py --max_steps=500
    torchrun --standalone --nproc_per_node=8 train.py config/production_8gpu.py
    python train.py config/production_8gpu.py --dry_run      # the plan, on any machine
    python train.py --report=checkpoints/<run>                # rewrite report.md
    python train.py --report=checkpoints/<a>,checkpoints/<b>  # and compare runs' val loss

One step = one optimizer update over global_batch_size sequences, split into
micro-batches across ranks and accumulation steps. Step s trains on batch s, which
loader.TokenWindows draws as a pure function of (seed, s): a run resumed at step k
continues exactly as if it had never stopped.

Read it in this order: main() starts the processes; train() is the loop; train_step() is
one update; after_step() is everything between two updates, and decides whether to stop;
prepare() does every check and resolves every setting before any process group or long
work, and build() makes what the loop needs; the rest are their small helpers.
"""

from __future__ import annotations  # the loop takes a Run, defined further down with build()

import contextlib
import dataclasses
import math
import os
import sys
import time

import numpy as np
import torch

from errors import run_cli
from evaluation import scoring
from model import (
    GPT,
    GPTConfig,
    compile_model,
    count_params,
    float8_layers,
    flops_per_token,
    n_linear,
    shape_differences,
    to_float8,
)
from parallel import distributed, sharding
from parallel.devices import autocast, torch_dtype
from parallel.preemption import EXIT_PREEMPTED, PreemptionSignal
from storage import checkpoint as ckpt
from storage import run_lock
from storage.atomic_files import write_json
from storage.weights import find_and_load, load_resume, source_config
from text import multiple_choice as mc
from text.loader import (
    GPT2_META,
    TokenMixture,
    TokenWindows,
    check_data_mix,
    check_vocab,
    load_meta,
    read_mixture_metas,
)
from text.tokenizer import describe_tokenizer, load_tokenizer, tokenizer_identity, tokenizer_option
from training.checkpointing import CheckpointManager
from training.config import ConfigError, TrainConfig, help_text, load_config
from training.memory import checkpoint_bytes
from training.optimizers import build_optimizers, describe, is_muon, set_learning_rates
from training.plan import format_plan, make_plan
from training.report import DATASET_LOSS, write_comparison, write_report
from training.reporter import Reporter
from training.resolve import Machine, Resolved, resolve
from training.schedule import lr_at, wsd_decay_start
from training.state import TrainState
from training.step_stats import HostCopies, StepValues, StepWatch
from training.stopping import Stop, decide


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(help_text())  # no arguments: the defaults alone would start a 124M run
        return 0
    cfg = load_config(argv)
    if cfg.report:
        runs = [r for r in cfg.report.split(",") if r]
        print(f"wrote {write_report(runs[0]) if len(runs) == 1 else write_comparison(runs)}")
        return 0
    if cfg.dry_run:
        print(format_plan(dry_run_plan(cfg)))
        return 0
    metas = read_mixture_metas(
        cfg.datasets()
    )  # data that cannot be used is refused before the run folder exists
    check_output_dir(cfg)  # on every rank, so a bad path stops them all, not only rank 0
    process = distributed.local_process(cfg.device)
    # rank 0 writes the run folder, and alone holds its lock
    with run_lock.hold(cfg.run_dir) if process.master else contextlib.nullcontext():
        return launch(cfg, metas, process)


def dry_run_plan(cfg: TrainConfig) -> dict:
    """make_plan for this config, reading no weights. Data not prepared yet is planned as
    GPT-2 tokens of unknown count; --init_from a Hugging Face folder plans its config.json's
    shape (with this config's context, init_shape)."""
    metas = {d: load_meta(d) if os.path.isdir(d) else GPT2_META for d in cfg.datasets()}
    data = {
        d: (w, metas[d].get("train_tokens") if os.path.isdir(d) else None)
        for d, w in check_data_mix(cfg.datasets()).items()
    }
    source = source_config(cfg.init_from) if cfg.init_from else None
    return make_plan(
        cfg,
        cfg.plan_gpus or distributed.world_size_from_env(),
        next(iter(metas.values()))["vocab_size"],
        data,
        init_shape(cfg, source) if source else None,
    )


def launch(cfg: TrainConfig, metas: dict, process: distributed.Dist) -> int:
    """Prepare (alone), join the other processes, build, train; the exit status. process:
    this one's rank, world size and device, before any process group."""
    start = prepare(cfg, metas, process)
    env = distributed.setup(process.device, cfg.collective_timeout_s, join=start.resolved.joins_process_group)
    clean, run = False, None
    try:
        with PreemptionSignal() as preempt:
            try:
                run = build(start, env)
                del start  # the checkpoint it was read from: now in the model and optimizer
                stop = train(run, preempt)
            except RuntimeError as e:
                if distributed.is_collective_failure(e, env):  # timed out, or lost a peer
                    message = distributed.explain_failure(env, e, stopping=preempt.received is not None)
                    raise distributed.CollectiveFailure(message) from e
                raise
        clean = True
    finally:
        if run is not None:
            run.reporter.close()  # a run that failed leaves no open log behind
        distributed.teardown(env, clean)
    return stop.exit_code


def train(run: Run, preempt: PreemptionSignal) -> Stop:
    """Train until one of the reasons in Stop; return it."""
    cfg, state = run.cfg, run.state
    if state.step >= cfg.max_steps:
        return finish(
            run,
            Stop.MAX_STEPS,
            f"nothing to train: the checkpoint is already at step "
            f"{state.step:,} = max_steps; raise --max_steps to go on",
        )
    copies = HostCopies(run.env.device)
    watch = StepWatch(
        cfg.max_nonfinite_steps,
        cfg.loss_spike_factor,
        run.scaler.is_enabled(),
        cfg.divergence_factor,
        cfg.divergence_steps,
    )
    if state.step == 0 and cfg.should_evaluate(0):
        with run.reporter.paused():
            evaluate_and_track(run)  # the untrained baseline: the report's Initial row
    clock_zero = time.time() - state.elapsed_s
    while True:
        step = state.step
        lr = lr_at(
            step,
            cfg.learning_rate,
            cfg.min_lr,
            cfg.warmup_steps,
            cfg.lr_decay_steps,
            cfg.lr_schedule,
            cfg.decay_fraction,
        )
        set_learning_rates(run.optimizers, lr / cfg.learning_rate, cfg)
        values = train_step(
            run.model,
            run.optimizers,
            run.scaler,
            micro_batches(run, step),
            cfg.grad_clip,
            run.autocast,
            run.env,
        )
        copies.push(step, lr, values)
        state.step = step + 1
        distributed.heartbeat(run.env, state.step)
        state.elapsed_s = time.time() - clock_zero
        stop = after_step(run, copies, watch, preempt.received is not None)
        if stop is not None:
            return finish(run, stop, stop_message(stop, run, watch))


def train_step(
    model, optimizers: list, scaler, batches: list, grad_clip: float, autocast_ctx, env: distributed.Dist
) -> StepValues:
    """One update of every optimizer over the micro-batches (x, y, dropout seed) of a step.

    Gradients are synchronized across ranks on the last micro-batch only. The update is
    applied only when the loss and the gradient norm are finite. The fused AdamW decides on
    the device, skipping its update when given GradScaler's `found_inf` tensor, so an AdamW
    step never waits for the GPU. Muon has no such input: with --optimizer=muon the host
    reads the verdict (one wait for the GPU per step, after backward) and skips Muon's step
    itself; in fp16 GradScaler does the same for it. Returns the step's numbers, still on
    the device.
    """
    loss_sum = torch.zeros((), device=env.device)
    for i, (x, y, seed) in enumerate(batches):
        torch.manual_seed(seed)  # dropout masks: a pure function of (seed, step, index)
        with sharding.grad_sync(model, i == len(batches) - 1), autocast_ctx:
            loss = model(x, y)
        loss_sum += loss.detach()
        scaler.scale(loss / len(batches)).backward()
    loss = distributed.all_reduce_mean(loss_sum / len(batches), env)
    for optimizer in optimizers:
        scaler.unscale_(optimizer)
    params = [p for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]]
    grad_norm = sharding.clip_grad_norm(params, grad_clip if grad_clip > 0 else math.inf).to(loss.device)
    applied = torch.isfinite(loss) & torch.isfinite(grad_norm)
    if scaler.is_enabled():  # fp16: the scaler skips inf/NaN gradients itself, and adapts its scale
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
    else:
        step_unless_nonfinite(optimizers, applied, params[0].device)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return StepValues(loss=loss, grad_norm=grad_norm.float(), applied=applied.float())


def step_unless_nonfinite(optimizers: list, applied: torch.Tensor, param_device: torch.device):
    """Step each optimizer unless `applied` is False: the fused AdamW reads it on the device
    as found_inf (on the parameters' device: the CPU with offload); any other optimizer
    (Muon) only after the host has read it."""
    found_inf = (~applied).float().to(param_device)
    for optimizer in optimizers:
        if not is_muon(optimizer):
            optimizer.found_inf, optimizer.grad_scale = found_inf, None
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf, optimizer.grad_scale
        elif applied.item():
            optimizer.step()


def micro_batches(run: Run, step: int) -> list:
    """This rank's micro-batches of step's global batch, each with its dropout seed."""
    cfg, env, out = run.cfg, run.env, []
    for micro in range(run.accumulation):
        index = micro * env.world + env.rank  # this micro-batch's place in the global batch
        x, y = run.train_data.batch(
            step, cfg.global_batch_size, index * cfg.micro_batch_size, cfg.micro_batch_size, env.device
        )
        out.append((x, y, dropout_seed(cfg.seed, step, index)))
    return out


def dropout_seed(seed: int, step: int, index: int) -> int:
    # Like the batches: resume needs no RNG state, and 1 GPU x 8 accumulation equals 8 GPUs.
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


def after_step(run: Run, copies: HostCopies, watch: StepWatch, signalled: bool) -> Stop | None:
    """Everything between two updates, in order: report the finished steps, evaluate and
    save where due, and decide whether the run stops (None: go on). state.step counts the
    updates done; signalled: a preemption signal reached this rank."""
    cfg, state = run.cfg, run.state
    done = state.step
    preempted = distributed.any_rank(run.env, signalled)
    due = preempted or done >= cfg.max_steps or cfg.should_evaluate(done) or run.checkpoints.should_save(done)
    # a step's numbers are read a step late so that the host never waits for the GPU, unless
    # they are needed now: for a log line, or before evaluating, saving or stopping
    for result in copies.pop(wait_for_all=due or cfg.should_log(copies.newest_step)):
        state.skipped_steps += not result.applied
        run.reporter.step(result, watch.check(result), state.skipped_steps, state.elapsed_s)
    with run.reporter.paused():
        improved = patience_spent = False
        if cfg.should_evaluate(done) and not (preempted or watch.broken):
            improved, patience_spent = evaluate_and_track(run)
        stop = decide(
            broken=watch.broken,
            preempted=preempted,
            at_max_steps=done >= cfg.max_steps,
            patience_spent=patience_spent,
        )
        run.checkpoints.after_step(state, stop, watch, improved, lambda: checkpoint_contents(run))
    return stop


# ---- what the loop does besides training -------------------------------------------------


@torch.no_grad()
def evaluate(model, windows: TokenWindows, cfg: TrainConfig, env: distributed.Dist, autocast_ctx) -> float:
    """Mean loss over eval_batches fixed batches of micro_batch_size sequences, the same
    set whatever the world size: rank r evaluates batches r, r + world, ..."""
    model.eval()
    total = torch.zeros((), device=env.device)
    for k in range(env.rank, cfg.eval_batches, env.world):
        x, y = windows.batch(k, cfg.micro_batch_size, 0, cfg.micro_batch_size, env.device, stream=1)
        with autocast_ctx:
            total += model(x, y).float()
    model.train()
    return distributed.all_reduce_sum(total, env).item() / cfg.eval_batches


def evaluate_and_track(run: Run) -> tuple[bool, bool]:
    """Evaluate: val loss on each dataset and their weighted mean (what best_model.pt and
    early stopping follow), an estimate of the train loss, and eval_tasks' accuracies; report
    them. (a new best, early stopping's patience spent)."""
    cfg, state = run.cfg, run.state
    inner = sharding.unwrapped(run.model)  # no backward: no DDP hooks
    losses = {
        d: evaluate(inner, source, cfg, run.env, run.autocast)
        for d, source in zip(run.val_data.data_dirs, run.val_data.sources)
    }
    val = run.val_data.mean(losses)
    train_estimate = evaluate(inner, run.train_data, cfg, run.env, run.autocast)
    # the eager model: each task batch has its own shape, which a compiled model would recompile for
    scores = (
        scoring.score_tasks(
            run.raw_model, run.tasks, run.env, run.autocast, cfg.micro_batch_size * run.model_cfg.block_size
        )
        if run.tasks
        else {}
    )
    improved = state.record_val_loss(val)
    state.record_watched(cfg.early_stopping_metric, {"val_loss": val, **scores}[cfg.early_stopping_metric])
    per_dataset = (
        {
            DATASET_LOSS + name: loss
            for name, loss in zip(dataset_names(run.val_data.data_dirs), losses.values())
        }
        if len(losses) > 1
        else {}
    )
    run.reporter.evaluation(
        state.step, val, train_estimate, improved, state.elapsed_s, {**per_dataset, **scores}
    )
    return improved, state.patience_spent(cfg.early_stopping_patience)


def dataset_names(data_dirs: list) -> list:
    """Short names of a mixture's datasets for metrics: their folder names (with their index
    where two share a name)."""
    names = [os.path.basename(os.path.normpath(d)) for d in data_dirs]
    return names if len(set(names)) == len(names) else [f"{i}_{n}" for i, n in enumerate(names)]


def checkpoint_contents(run: Run) -> dict:
    """What a checkpoint holds (storage.checkpoint's format), gathered whole to rank 0: every
    rank takes part."""
    model_state, optimizer_state = sharding.full_state(run.raw_model, run.optimizers)
    return dict(
        model=model_state,
        optimizer=optimizer_state,
        scaler=run.scaler.state_dict(),
        model_config=dataclasses.asdict(run.model_cfg),
        config=run.cfg.to_dict(),
        tokenizer=run.meta,
        **run.state.state_dict(),
    )


def finish(run: Run, stop: Stop, message: str) -> Stop:
    run.reporter.end(run.state.step, run.state.elapsed_s, stop.value, message)
    return stop


def stop_message(stop: Stop, run: Run, watch: StepWatch) -> str:
    state = run.state
    if stop in (Stop.NONFINITE, Stop.DIVERGED):
        steps = watch.streak
        what = (
            "had a non-finite loss or gradient norm; none of them was applied"
            if stop is Stop.NONFINITE
            else f"had a loss over {run.cfg.divergence_factor:g} x the mean of the steps before them: the run diverged"
        )
        return (
            f"stopped: {len(steps)} steps in a row (steps {steps[0]:,} to {steps[-1]:,}) {what}. "
            + _where_to_go_on(run.cfg, steps[0])
        )
    if stop is Stop.PREEMPTED:
        return (
            f"preempted: saved {ckpt.latest_checkpoint(run.cfg.run_dir)} at step {state.step:,}; continue with "
            f"--resume (exit status {EXIT_PREEMPTED} asks a scheduler to requeue)"
        )
    return f"done: {stop.value} at step {state.step:,}; {_best_summary(run.cfg, state)}"


def _best_summary(cfg: TrainConfig, state: TrainState) -> str:
    """The best val loss, or why there is none (and so no best_model.pt)."""
    if math.isfinite(state.best_val_loss):
        return f"best val loss {state.best_val_loss:.4f}"
    if cfg.eval_batches == 0:
        why = "evaluation is off (eval_batches=0)"
    elif not math.isfinite(state.baseline_val_loss):
        why = "the starting point's val loss was not finite, so nothing can be measured against it"
    else:
        why = f"no evaluation beat the starting point's val loss {state.baseline_val_loss:.4f}"
    return (
        f"no best val loss: {why}, so there is no best_model.pt (sample.py, export.py and evaluate.py "
        f"use the newest step checkpoint, and say so)"
    )


def _where_to_go_on(cfg: TrainConfig, first_bad_step: int) -> str:
    """Advice after a broken streak. Checkpoint N holds the weights step N's loss was measured
    on, so only one from before the streak's first step is known to be good."""
    good = [path for step, path in ckpt.step_checkpoints(cfg.run_dir) if step < first_bad_step]
    if good:
        return (
            f"The newest checkpoint from before them is {good[-1]}: lower --learning_rate (or raise "
            f"--warmup_steps), then --resume={good[-1]}"
        )
    return (
        "No checkpoint was saved before them: lower --learning_rate (or raise --warmup_steps) and start "
        "again under a new --run_name"
    )


# ---- before the loop: every check first, then the model --------------------------------


@dataclasses.dataclass
class Start:
    """What prepare() found and decided, before any process group exists."""

    resolved: Resolved
    accumulation: int  # micro-batches per rank per step
    meta: dict
    train_data: TokenMixture
    val_data: TokenMixture
    tasks: list[mc.Task]  # each of eval_tasks' fixed subset, encoded
    source: dict | None  # the checkpoint resumed or started from (weights, optimizer, state)
    source_path: str | None  # the checkpoint resumed or started from
    resumed: bool
    state: TrainState


@dataclasses.dataclass
class Run:
    """Everything the loop reads, built whole by build()."""

    cfg: TrainConfig  # resolved: no "auto" or None defaults left
    model_cfg: GPTConfig
    env: distributed.Dist
    meta: dict
    train_data: TokenMixture
    val_data: TokenMixture
    tasks: list[mc.Task]
    accumulation: int
    raw_model: GPT
    model: torch.nn.Module  # raw_model, compiled and/or wrapped in DDP
    optimizers: list  # torch.optim.Optimizer: [AdamW], or [AdamW, Muon] (training/optimizers.py)
    scaler: torch.amp.GradScaler
    autocast: contextlib.AbstractContextManager  # mixed precision for forward passes
    state: TrainState
    reporter: Reporter
    checkpoints: CheckpointManager  # when to save, what to keep, best_model.pt


def prepare(cfg: TrainConfig, metas: dict, process: distributed.Dist) -> Start:
    """Every check that can fail, and every setting resolved, before any long work: data,
    tasks, the checkpoint to resume or start from, the model's shape, how the run runs.
    metas: each dataset's (one tokenizer). Rank 0 (process.master), which writes the run
    folder, alone sets corrupt checkpoints aside."""
    meta = next(iter(metas.values()))
    task_examples = mc.read_tasks(cfg.eval_tasks)  # every line of every task file, before anything slow
    # a batch that does not split over the ranks is refused before any checkpoint is read
    accumulation = cfg.accumulation(process.world)
    resume_path, source = find_resume(cfg, process.master)
    source_path = resume_path
    if cfg.init_from and not resume_path:  # --resume=auto: init_from starts the run, only once
        source_path, source = find_and_load(cfg.init_from, say=print if process.master else lambda line: None)
    if resume_path:
        check_same_data(cfg, source, resume_path)
        check_same_optimizer(cfg, source, resume_path)
    resolved = resolve(
        cfg, Machine.of(process.device, process.world), model_shape(cfg, meta, source, resume_path)
    )
    cfg, model_cfg = resolved.cfg, resolved.model_cfg
    for data_dir, data_meta in metas.items():
        check_vocab(data_meta, model_cfg.vocab_size, data_dir)
    train_data, val_data = (
        TokenMixture(
            cfg.datasets(), split, model_cfg.block_size, metas, cfg.seed, vocab_limit=model_cfg.vocab_size
        )
        for split in ("train", "val")
    )
    tasks = mc.prepare_tasks(
        cfg.eval_tasks, task_examples, load_tokenizer(meta), model_cfg.block_size, cfg.eval_task_examples
    )
    state = TrainState.from_checkpoint(source) if resume_path else TrainState()
    if state.step > cfg.max_steps:
        raise ConfigError(
            f"{resume_path} is at step {state.step:,}, past max_steps={cfg.max_steps:,}; "
            f"raise --max_steps to train on (and --lr_decay_steps if the schedule should stretch)"
        )
    if process.master and resume_path and (warning := extension_warning(cfg, source, state.step)):
        print(warning)
    if process.master:
        for task in tasks:  # lm-eval warns too; a silent cut would skew the scores unseen
            if warning := mc.truncation_warning(task, model_cfg.block_size):
                print(warning)
    return Start(
        resolved,
        accumulation,
        meta,
        train_data,
        val_data,
        tasks,
        source,
        source_path,
        bool(resume_path),
        state,
    )


def find_resume(cfg: TrainConfig, master: bool) -> tuple[str | None, dict | None]:
    """The checkpoint to resume from and its contents ((None, None): a fresh run), checking the
    folder either way. A corrupt newest checkpoint is passed over (weights.load_resume); rank 0
    (master) says so and sets it aside."""
    if cfg.resume:
        path, source = load_resume(cfg.resume, cfg.run_dir, say=print if master else None, set_aside=master)
        if path is None and cfg.resume == "latest":
            raise ConfigError(
                f"--resume: no checkpoint_step_N.pt in {cfg.run_dir}; drop --resume to start fresh"
            )
        return path, source
    if ckpt.step_checkpoints(cfg.run_dir):
        raise ConfigError(
            f"{cfg.run_dir} already holds checkpoints; add --resume to continue it or pick a new --run_name"
        )
    return None, None


def check_same_data(cfg: TrainConfig, source: dict, resume_path: str):
    """A resumed run draws the batches it would have drawn: refuse another data mixture."""
    saved = (source.get("config") or {}).get("data_mix") or {}
    if saved or cfg.data_mix:
        before, now = (check_data_mix(m) if m else {} for m in (saved, cfg.data_mix))
        if before != now:
            raise ConfigError(
                f"{resume_path} was trained on data_mix={saved or {}} but this run sets "
                f"data_mix={cfg.data_mix or {}}; a resume must draw the same batches: keep its "
                f"data_mix, or start a new run from its weights with --init_from"
            )


def extension_warning(cfg: TrainConfig, source: dict, step: int) -> str | None:
    """A wsd run resumed with a later decay end trains as a run planned that long only from
    a checkpoint of its constant stage; say so when the checkpoint was already decaying."""
    saved = source.get("config") or {}
    if cfg.lr_schedule != "wsd" or saved.get("lr_schedule") != "wsd":
        return None
    old_end = saved.get("lr_decay_steps") or saved.get("max_steps")
    if not old_end or old_end == cfg.lr_decay_steps:
        return None
    start = wsd_decay_start(saved.get("warmup_steps", 0), old_end, saved.get("decay_fraction", 0.2))
    if step <= start:
        return None
    return (
        f"warning: this checkpoint (step {step:,}) is past its run's wsd decay start (step {start:,}): "
        f"extended to {cfg.lr_decay_steps:,} steps it will not match a run planned that long; resume "
        f"a checkpoint from step {start:,} or before for that"
    )


def check_same_optimizer(cfg: TrainConfig, source: dict, resume_path: str):
    """A resume continues the optimizers' state: refuse another optimizer (a checkpoint from
    before --optimizer existed was trained with AdamW)."""
    saved = (source.get("config") or {}).get("optimizer", "adamw")
    if saved != cfg.optimizer:
        raise ConfigError(
            f"{resume_path} was trained with --optimizer={saved}, whose state this run cannot "
            f"continue with --optimizer={cfg.optimizer}; resume with --optimizer={saved}, or start "
            f"a new run from its weights with --init_from={resume_path}"
        )


def check_output_dir(cfg: TrainConfig):
    """Refuse a run folder this process cannot write, naming the fix: for a run to resume,
    making its folder writable again (another --out_dir would leave its checkpoints behind)."""
    run_dir = cfg.run_dir
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_test.{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        if cfg.resume and ckpt.step_checkpoints(run_dir):
            raise ConfigError(
                f"cannot write to {run_dir!r} ({e.strerror}), which holds the checkpoints to resume: make "
                f"it writable again (a read-only filesystem: remount it read-write; permissions: chmod "
                f"u+w), then run the same command"
            ) from e
        raise ConfigError(f"cannot write to {run_dir!r} ({e.strerror}); pick another --out_dir") from e


def model_shape(cfg: TrainConfig, meta: dict, source: dict | None, resume_path: str | None) -> GPTConfig:
    """The model's architecture (the resolver adds the run's training fields): from the
    config for a fresh run; with a checkpoint to resume or start from, the checkpoint's.
    Resuming, the config's shape must be the checkpoint's; with --init_from the config's
    explicit model fields may not change it."""
    if source is None:
        return cfg.model_config(meta["vocab_size"])
    saved = GPTConfig(**source["model_config"])
    _refuse_other_tokenizer(
        source.get("tokenizer") or {}, meta, resume_path or f"--init_from={cfg.init_from}", cfg
    )
    if resume_path and cfg.init_from:  # the run began from init_from: its checkpoint has that shape
        return init_shape(cfg, saved)
    if resume_path:
        _refuse_shape_change(
            saved,
            cfg.model_config(meta["vocab_size"]),
            f"{resume_path} holds a model of a different shape",
            "use the config it was trained with, or a new --run_name",
        )
        return saved
    saved = init_shape(cfg, saved)
    if saved.vocab_size < meta["vocab_size"] <= saved.padded_vocab:
        # the data has ids past the model's, inside its padding rows (a nanoGPT char model has no
        # end-of-text id; ours adds one): they start as zero rows and train like the others
        saved = dataclasses.replace(saved, vocab_size=meta["vocab_size"])
    return saved


def init_shape(cfg: TrainConfig, saved: GPTConfig) -> GPTConfig:
    """--init_from's shape (saved), refusing config fields that change it; but a rotary
    model's context is no weight, so an explicit block_size sets it (continued pretraining
    trains at 4,096 what was published for 32,768)."""
    if saved.rope_theta > 0 and cfg.block_size is not None:
        saved = dataclasses.replace(saved, block_size=cfg.block_size)
    _refuse_shape_change(
        saved,
        dataclasses.replace(saved, **cfg.model_overrides()),
        f"--init_from={cfg.init_from} sets the model's shape, but the config changes it",
        "drop those settings",
    )
    return saved


def _refuse_other_tokenizer(tok: dict, meta: dict, model: str, cfg: TrainConfig):
    """The data's ids must mean what they meant to the model: one line naming both
    tokenizers and the command that re-prepares the data with the model's."""
    if tok and tokenizer_identity(tok) != tokenizer_identity(meta):
        data = ", ".join(cfg.datasets())
        raise ConfigError(
            f"{model} uses the tokenizer {describe_tokenizer(tok)} but {data} was tokenized "
            f"with {describe_tokenizer(meta)}; re-prepare the data with the model's: "
            f"python prepare_data.py --tokenizer={tokenizer_option(tok)} ..."
        )


def _refuse_shape_change(saved: GPTConfig, wanted: GPTConfig, what: str, fix: str):
    diff = shape_differences(saved, wanted)
    if diff:
        raise ConfigError(
            f"{what}: " + ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in diff.items()) + f"; {fix}"
        )


def build(start: Start, env: distributed.Dist) -> Run:
    """The model, sharded (FSDP) before the optimizer sees its parameters, then the
    checkpoint's state loaded into both, then compiled and replicated (DDP); the reporter;
    and, on rank 0, config.json and the start lines."""
    cfg, model_cfg, source = start.resolved.cfg, start.resolved.model_cfg, start.source
    dtype = torch_dtype(cfg.dtype)
    torch.manual_seed(cfg.seed)
    raw_model = GPT(model_cfg).to("cpu" if cfg.offload else env.device)  # offload: never whole on the GPU
    if cfg.fp8:  # before FSDP, compile and DDP wrap the layers it swaps (torchtitan's order)
        to_float8(raw_model)
    if cfg.parallelism == "fsdp":
        sharding.shard(raw_model, env, dtype, cfg.offload)
    optimizers = build_optimizers(raw_model, cfg)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    if source:
        sharding.load_full_state(
            raw_model,
            optimizers if start.resumed else None,
            ckpt.clean_state_dict(source["model"]),
            source["optimizer"] if start.resumed else None,
        )
        if start.resumed and source.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(source["scaler"])
        elif start.resumed and scaler.is_enabled():
            print("note: the checkpoint was not trained in float16; the loss scale starts afresh")
    model = compile_model(raw_model) if cfg.compile else raw_model
    if cfg.parallelism == "ddp":
        model = sharding.replicate(model, env)
    reporter = Reporter(
        cfg,
        env,
        start.resolved.tokens_per_step,
        flops_per_token(model_cfg),
        scaler,
        start.state.step,
        start.resumed,
    )
    run = Run(
        cfg,
        model_cfg,
        env,
        start.meta,
        start.train_data,
        start.val_data,
        start.tasks,
        start.accumulation,
        raw_model,
        model,
        optimizers,
        scaler,
        autocast(env.device, dtype),
        start.state,
        reporter,
        CheckpointManager(cfg, env, reporter),
    )
    if env.master:
        run.checkpoints.start(start.state.step, checkpoint_bytes(model_cfg, cfg.optimizer))
        announce(run, start)
    return run


def announce(run: Run, start: Start):
    """Rank 0: config.json (the config as resolved, and how), warnings, the start lines and
    the start record."""
    cfg, env, model_cfg, state, say = run.cfg, run.env, run.model_cfg, run.state, run.reporter.print
    tokens_per_step, total_tokens = start.resolved.tokens_per_step, start.resolved.total_tokens
    fp8_layers = float8_layers(run.raw_model) if cfg.fp8 else []
    derived = dict(
        world_size=env.world,
        accumulation=run.accumulation,
        device=str(env.device),
        tokens_per_step=tokens_per_step,
        params=count_params(model_cfg),
        model_config=dataclasses.asdict(model_cfg),
        resolved=start.resolved.to_dict(),
        fp8_layers=fp8_layers,
        optimizer_params={
            type(o).__name__: sum(p.numel() for g in o.param_groups for p in g["params"])
            for o in run.optimizers
        },
    )
    derived["datasets"] = run.train_data.drawn(total_tokens)  # tokens and epochs of each
    write_json(os.path.join(cfg.run_dir, "config.json"), dict(config=cfg.to_dict(), derived=derived))
    epochs, source_list = max(d["epochs"] for d in derived["datasets"]), run.train_data.sources
    if cfg.dtype == "float16" and env.device.type == "cpu":
        say("warning: float16 on CPU is very slow; prefer --dtype=bfloat16 or float32")
    if cfg.fp8 and not cfg.compile:
        say(
            "warning: --fp8 without compile: the float8 casts run unfused, slower than bf16; drop --compile=False"
        )
    if epochs > 20:
        say(
            f"warning: {epochs:,.0f} epochs over a train.bin: the model will memorize it; "
            f"lower max_steps or prepare more data"
        )
    if cfg.warmup_steps >= cfg.lr_decay_steps:
        say(
            f"warning: warmup_steps={cfg.warmup_steps} >= the decay end {cfg.lr_decay_steps}: "
            f"the learning rate never leaves warmup; lower --warmup_steps"
        )
    say(
        f"world size {env.world} | device {env.device} | dtype {cfg.dtype} | compile {cfg.compile} | "
        f"parallelism {cfg.parallelism}{' + offload' if cfg.offload else ''} ({start.resolved.why})\n"
        f"micro-batch {cfg.micro_batch_size} x accumulation {run.accumulation} x {env.world} "
        f"{env.device_kind} = {cfg.global_batch_size} sequences = {tokens_per_step:,} tokens per step\n"
        f"{cfg.max_steps:,} steps = {total_tokens:,} tokens = "
        + "; ".join(
            f"{d['epochs']:.2f} epochs of {os.path.join(d['data_dir'], 'train.bin')} "
            f"({source.n_tokens:,} tokens" + (f", weight {d['weight']:.2f})" if len(source_list) > 1 else ")")
            for d, source in zip(derived["datasets"], source_list)
        )
        + f"\n{describe(cfg)}"
        + f"\nparameters {count_params(model_cfg):,} | "
        f"{flops_per_token(model_cfg) * tokens_per_step:.3e} FLOPs per step"
        + (
            f" | resuming from {start.source_path} at step {state.step:,}"
            if start.resumed
            else f" | weights and shape from {start.source_path}"
            if start.source_path
            else ""
        )
        + (
            f"\nfp8: float8 matmuls in {len(fp8_layers)} of {n_linear(run.raw_model)} linear layers (torchao; "
            f"the tied head and the rest in bf16); MFU is counted against the bf16 peak"
            if cfg.fp8
            else ""
        )
    )
    run.reporter.record(dict(kind="start", step=state.step, config=cfg.to_dict(), dtype=cfg.dtype, **derived))


if __name__ == "__main__":
    run_cli(main)
