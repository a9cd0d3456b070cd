"""Train a GPT on a CPU, one GPU, or many GPUs (torchrun), with exact resume.

    python train.py config/shakespeare_cpu.py --max_steps=500
    torchrun --standalone --nproc_per_node=8 train.py config/production_8gpu.py
    python train.py config/production_8gpu.py --dry_run      # the plan, on any machine
    python train.py --report=checkpoints/<run>                # rewrite report.md

One step = one optimizer update over global_batch_size sequences, split into
micro-batches across ranks and accumulation steps. Step s trains on batch s, which
loader.TokenWindows draws as a pure function of (seed, s): a run resumed at step k
continues exactly as if it had never stopped.

Read it in this order: train() is the loop; train_step() is one update; prepare() does
every check and builds what the loop needs; the rest are the loop's small helpers.
"""
import dataclasses
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import checkpoint as ckpt
import distributed
import sharding
from atomic_files import write_json
from devices import autocast, dtype_name, peak_flops, pick_dtype
from loader import GPT2_META, TokenWindows, check_vocab, load_meta, read_meta
from metrics import RunLog
from plan import auto_way, format_plan, make_plan
from model import TRAINING_FIELDS, GPT, GPTConfig, count_params, flops_per_token, shape_differences
from preemption import EXIT_PREEMPTED, PreemptionSignal
from report import write_report
from schedule import lr_at
from step_stats import HostCopies, StepWatch, Throughput, describe_event
from train_config import ConfigError, TrainConfig, help_text, load_config
from train_state import TrainState
from weights import load_resume, load_weights, resolve_checkpoint

# Why a run stopped -> the process's exit status. A preempted run exits with a status that
# asks to be requeued; the others save their last checkpoint, except "nonfinite", which
# leaves the last good one as it was.
EXIT_CODES = {"max_steps": 0, "early_stopping": 0, "preempted": EXIT_PREEMPTED, "nonfinite": 1}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(help_text())  # no arguments: the defaults alone would start a 124M run
        return 0
    cfg = load_config(argv)
    if cfg.report:
        print(f"wrote {write_report(cfg.report)}")
        return 0
    if cfg.dry_run:
        meta = load_meta(cfg.data_dir) if os.path.isdir(cfg.data_dir) else GPT2_META
        print(format_plan(make_plan(cfg, cfg.plan_gpus or distributed.world_size_from_env(),
                                    meta["vocab_size"], meta.get("train_tokens"))))
        return 0
    env = distributed.setup(cfg.device, cfg.collective_timeout_s,
                            group_of_one=cfg.parallelism == "fsdp" or cfg.offload)
    clean = False
    try:
        with PreemptionSignal() as preempt:
            try:
                reason = train(cfg, env, preempt)
            except RuntimeError as e:
                if distributed.is_collective_failure(e, env):  # timed out, or lost a peer
                    message = distributed.explain_failure(env, e, stopping=preempt.received is not None)
                    raise distributed.CollectiveFailure(message) from e
                raise
        clean = True
    finally:
        distributed.teardown(env, clean)
    return EXIT_CODES[reason]


def train(cfg: TrainConfig, env: distributed.Dist, preempt: PreemptionSignal) -> str:
    """Train until max_steps, early stopping, a preemption signal or too many non-finite
    steps in a row; return which of those ended it (a key of EXIT_CODES)."""
    run = prepare(cfg, env)
    cfg, state = run.cfg, run.state
    if state.step >= cfg.max_steps:
        return finish(run, "max_steps", f"nothing to train: the checkpoint is already at step "
                                        f"{state.step:,} = max_steps; raise --max_steps to go on")
    copies, meter = HostCopies(env.device), Throughput()
    watch = StepWatch(cfg.max_nonfinite_steps, cfg.loss_spike_factor, run.scaler.is_enabled())
    if state.step == 0 and cfg.should_evaluate(0):
        with meter.excluding():
            evaluate_and_track(run)  # the untrained baseline: the report's Initial row
    clock_zero = time.time() - state.elapsed_s
    stop = None
    while stop is None:
        step = state.step
        lr = lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.lr_decay_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        values = train_step(run.model, run.optimizer, run.scaler, micro_batches(run, step),
                            cfg.grad_clip, run.autocast, env)
        copies.push(step, lr, values)
        meter.add(run.tokens_per_step)
        state.step = step + 1
        distributed.heartbeat(env, state.step)
        state.elapsed_s = time.time() - clock_zero
        stop = ("preempted" if distributed.any_rank(env, preempt.received is not None)
                else "max_steps" if state.step >= cfg.max_steps else None)
        acts = stop or cfg.should_evaluate(state.step) or cfg.should_save(state.step)
        for result in copies.pop(wait_for_all=acts or cfg.should_log(step)):  # every step's, before acting
            record_step(run, result, watch.check(result), meter)
        stop = "nonfinite" if watch.should_stop else stop
        with meter.excluding():
            if stop in (None, "max_steps") and cfg.should_evaluate(state.step):
                if evaluate_and_track(run) and stop is None:
                    stop = "early_stopping"
            if cfg.should_save(state.step, stop):
                save_step_checkpoint(run, watch)
        run.bar.update(1)
    return finish(run, stop, _stop_message(stop, run, watch))


def train_step(model, optimizer, scaler, batches: list, grad_clip: float, autocast_ctx,
               env: distributed.Dist) -> torch.Tensor:
    """One optimizer update over the micro-batches (x, y, dropout seed) of a step.

    Gradients are synchronized across ranks on the last micro-batch only. The update is
    applied only when the loss and the gradient norm are finite, decided on the device:
    the fused AdamW skips its update when given GradScaler's `found_inf` tensor, so no step
    waits for the GPU. Returns [loss (global mean), grad norm (before clipping), applied]
    as one tensor on the device.
    """
    loss_sum = torch.zeros((), device=env.device)
    for i, (x, y, seed) in enumerate(batches):
        torch.manual_seed(seed)  # dropout masks: a pure function of (seed, step, index)
        with sharding.grad_sync(model, i == len(batches) - 1), autocast_ctx:
            loss = model(x, y)[1]
        loss_sum += loss.detach()
        scaler.scale(loss / len(batches)).backward()
    loss = distributed.all_reduce_mean(loss_sum / len(batches), env)
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = sharding.clip_grad_norm(params, grad_clip if grad_clip > 0 else math.inf)
    applied = torch.isfinite(loss) & torch.isfinite(grad_norm.to(loss.device))
    if scaler.is_enabled():  # fp16: the scaler skips inf/NaN gradients itself, and adapts its scale
        scaler.step(optimizer)
        scaler.update()
    else:  # found_inf on the parameters' device (the CPU with offload)
        optimizer.found_inf, optimizer.grad_scale = (~applied).float().to(params[0].device), None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale
    optimizer.zero_grad(set_to_none=True)
    return torch.stack([loss, grad_norm.to(loss.device).float(), applied.float()])


def micro_batches(run, step: int) -> list:
    """This rank's micro-batches of step's global batch, each with its dropout seed."""
    cfg, env, out = run.cfg, run.env, []
    for micro in range(run.accumulation):
        index = micro * env.world + env.rank  # this micro-batch's place in the global batch
        x, y = run.train_data.batch(step, cfg.global_batch_size, index * cfg.micro_batch_size,
                                    cfg.micro_batch_size, env.device)
        out.append((x, y, dropout_seed(cfg.seed, step, index)))
    return out


def dropout_seed(seed: int, step: int, index: int) -> int:
    # Like the batches: resume needs no RNG state, and 1 GPU x 8 accumulation equals 8 GPUs.
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


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
            total += model(x, y)[1].float()
    model.train()
    return distributed.all_reduce_sum(total, env).item() / cfg.eval_batches


def evaluate_and_track(run) -> bool:
    """Evaluate val and train loss, save best_model.pt on improvement, log; True when
    early stopping says the run should end."""
    cfg, state = run.cfg, run.state
    inner = sharding.unwrapped(run.model)  # no backward: no DDP hooks
    val = evaluate(inner, run.val_data, cfg, run.env, run.autocast)
    train_est = evaluate(inner, run.train_data, cfg, run.env, run.autocast)
    improved = state.record_eval(val)
    if improved:
        save(run, ckpt.BEST_FILE)
    if run.log:
        run.log.log(dict(kind="eval", step=state.step, val_loss=val, val_ppl=math.exp(min(val, 50)),
                         train_loss=train_est, elapsed_s=state.elapsed_s))
        run.bar.write(f"step {state.step:,}: val loss {val:.4f} (ppl {math.exp(min(val, 50)):.2f}) | "
                      f"train loss {train_est:.4f}" + (" | best" if improved else ""))
    return 0 < cfg.early_stopping_patience <= state.evals_without_improvement


def save(run, name: str):
    """Gather the full state to rank 0 (every rank takes part), write it, prune old step
    checkpoints, then let every rank go on."""
    model_state, optimizer_state = sharding.full_state(run.raw_model, run.optimizer)
    if run.env.master:
        path = os.path.join(run.cfg.run_dir, name)
        ckpt.save_checkpoint(dict(
            model=model_state, optimizer=optimizer_state,
            scaler=run.scaler.state_dict(), model_config=dataclasses.asdict(run.model_cfg),
            config=run.cfg.to_dict(), tokenizer=run.meta, **run.state.state_dict()), path)
        if ckpt.is_step_file(name):
            ckpt.prune(run.cfg.run_dir, run.cfg.keep_last)
        run.log.log(dict(kind="checkpoint", step=run.state.step, path=path, best=name == ckpt.BEST_FILE,
                         elapsed_s=run.state.elapsed_s))
    distributed.barrier(run.env)


def save_step_checkpoint(run, watch: StepWatch):
    """checkpoint_step_N.pt, unless the last step's loss was not finite: a checkpoint is
    somewhere to go back to, and that state is not."""
    if watch.nonfinite_streak:
        if run.log:
            run.bar.write(f"step {run.state.step:,}: not saving {ckpt.step_file(run.state.step)}: the last "
                          f"step's loss or gradient norm was not finite")
        return
    save(run, ckpt.step_file(run.state.step))


def record_step(run, r, events: list, meter: Throughput):
    """Count a step's result, and log it (rank 0) when it is a log step or worth noting."""
    state = run.state
    state.skipped_steps += not r.applied
    if not run.log:
        return
    for event in events:
        run.log.log(event)
        run.bar.write(describe_event(event))
    if not run.cfg.should_log(r.step):
        return
    tok_s = meter.rate()
    mfu = run.flops_per_token * tok_s / (run.peak * run.env.world) if run.peak and tok_s else None
    mem = (torch.cuda.max_memory_allocated(run.env.device) if run.env.device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    scale = run.scaler.get_scale() if run.scaler.is_enabled() else None
    run.log.log(dict(kind="train", step=r.step, loss=r.loss, lr=r.lr, grad_norm=r.grad_norm,
                     applied=r.applied, tokens_per_s=tok_s, mfu=mfu, peak_mem_gib=mem, loss_scale=scale,
                     skipped_steps=state.skipped_steps, tokens=r.step * run.tokens_per_step,
                     elapsed_s=state.elapsed_s))
    run.bar.write(" | ".join(
        [f"step {r.step:,}/{run.cfg.max_steps:,}", f"loss {r.loss:.4f}", f"lr {r.lr:.2e}", f"grad {r.grad_norm:.3f}",
         f"{tok_s:,.0f} tok/s" if tok_s else "- tok/s", f"mfu {mfu:.1%}" if mfu is not None else "mfu n/a",
         f"mem {mem:.2f} GiB"] + ([f"scale {scale:.0f}, skipped {state.skipped_steps}"] if scale else [])))


def finish(run, reason: str, message: str) -> str:
    run.bar.close()
    if run.log:
        run.log.log(dict(kind="end", step=run.state.step, elapsed_s=run.state.elapsed_s, reason=reason))
        run.log.close()
        print(f"{message}\nreport: {write_report(run.cfg.run_dir)}", flush=True)
    return reason


def _stop_message(stop: str, run, watch: StepWatch) -> str:
    state, last = run.state, ckpt.latest_checkpoint(run.cfg.run_dir)
    if stop == "nonfinite":
        steps = watch.nonfinite_streak
        kept = f"The last checkpoint, {last}, is intact" if last else "No step checkpoint was saved before them"
        return (f"stopped: {len(steps)} steps in a row (steps {steps[0]:,} to {steps[-1]:,}) had a non-finite "
                f"loss or gradient norm; none of them was applied. {kept}. Lower --learning_rate (or raise "
                f"--warmup_steps), then --resume")
    if stop == "preempted":
        return (f"preempted: saved {last} at step {state.step:,}; continue with --resume "
                f"(exit status {EXIT_PREEMPTED} asks a scheduler to requeue)")
    best = f"{state.best_val_loss:.4f}" if math.isfinite(state.best_val_loss) else "none"
    return f"done: {stop} at step {state.step:,}; best val loss {best}"


# ---- before the loop: every check first, then the model --------------------------------

@dataclasses.dataclass
class Run:
    """Everything the loop reads, built once by prepare()."""
    cfg: TrainConfig  # resolved: no "auto" or None defaults left
    env: distributed.Dist
    meta: dict
    model_cfg: GPTConfig
    train_data: TokenWindows
    val_data: TokenWindows
    accumulation: int
    raw_model: GPT
    model: torch.nn.Module  # raw_model, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object
    state: TrainState
    log: RunLog | None  # rank 0 only
    bar: object
    tokens_per_step: int
    flops_per_token: int
    peak: float | None


def prepare(cfg: TrainConfig, env: distributed.Dist) -> Run:
    """Every check that can fail runs before any long work; then data, model, optimizer
    and state (restored from a checkpoint when resuming)."""
    dtype = pick_dtype(cfg.dtype, env.device)
    cfg = cfg.resolved(env.device.type, dtype_name(dtype))
    meta = read_meta(cfg.data_dir)
    accumulation = cfg.accumulation(env.world)
    resume_path, source = find_resume(cfg, env.master)
    check_output_dir(cfg.run_dir)  # on every rank, so a bad path stops them all, not only rank 0
    if cfg.init_from:
        source = load_weights(resolve_checkpoint(cfg.init_from))
    model_cfg = model_config_for(cfg, meta, source, resume_path)
    check_vocab(meta, model_cfg.vocab_size, cfg.data_dir)
    train_data, val_data = (TokenWindows(cfg.data_dir, split, model_cfg.block_size, meta, cfg.seed,
                                         vocab_limit=model_cfg.vocab_size) for split in ("train", "val"))
    state = TrainState.from_checkpoint(source) if resume_path else TrainState()
    if state.step > cfg.max_steps:
        raise ConfigError(f"{resume_path} is at step {state.step:,}, past max_steps={cfg.max_steps:,}; "
                          f"raise --max_steps to train on (and --lr_decay_steps if the schedule should stretch)")
    if dtype == torch.float16 and env.device.type == "cpu":
        print("warning: float16 on CPU is very slow; prefer --dtype=bfloat16 or float32")
    if cfg.offload and env.device.type != "cuda":
        raise ConfigError("--offload moves FSDP's shards from a GPU to CPU memory; on a CPU run there is "
                          "nothing to free: drop --offload")
    way, why = auto_way(cfg, env.world, model_cfg,
                        torch.cuda.get_device_properties(env.device).total_memory if env.device.type == "cuda"
                        else float("inf"))
    cfg = dataclasses.replace(cfg, parallelism=way.parallelism)  # saved with the run as it ran

    raw_model, model, optimizer, scaler = build(cfg, env, model_cfg, dtype, source, bool(resume_path))
    del source
    run = Run(cfg, env, meta, model_cfg, train_data, val_data, accumulation, raw_model, model, optimizer,
              scaler, autocast(env.device, dtype), state, None, None,
              tokens_per_step=cfg.global_batch_size * model_cfg.block_size,
              flops_per_token=flops_per_token(model_cfg),
              peak=peak_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None)
    if env.master:
        ckpt.remove_stale_temp_files(cfg.run_dir)
        run.log = RunLog(cfg.run_dir, cfg.tensorboard, purge_step=state.step + 1 if resume_path else None)
        announce(run, resume_path or cfg.init_from, bool(resume_path), why)
    # a bar only on a terminal: in a log file its redraws bury the log lines
    run.bar = _progress(env.master and cfg.progress_bar and sys.stderr.isatty(), state.step, cfg.max_steps)
    return run


def find_resume(cfg: TrainConfig, master: bool) -> tuple[str | None, dict | None]:
    """The checkpoint to resume from and its contents ((None, None): a fresh run), checking the
    folder either way. A corrupt newest checkpoint is passed over (weights.load_resume)."""
    if cfg.resume:
        path, source = load_resume(cfg.resume, cfg.run_dir, say=print if master else None, set_aside=master)
        if path is None and cfg.resume == "latest":
            raise ConfigError(f"--resume: no checkpoint_step_N.pt in {cfg.run_dir}; drop --resume to start fresh")
        return path, source
    if ckpt.step_checkpoints(cfg.run_dir):
        raise ConfigError(f"{cfg.run_dir} already holds checkpoints; add --resume to continue it "
                          f"or pick a new --run_name")
    return None, None


def check_output_dir(run_dir: str):
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_test.{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to {run_dir!r} ({e.strerror}); pick another --out_dir") from e


def model_config_for(cfg: TrainConfig, meta: dict, source: dict | None, resume_path: str | None) -> GPTConfig:
    """The model's config: from the config file for a fresh run. With a checkpoint to
    resume or start from, the checkpoint's architecture with this config's training fields
    (dropout, activation checkpointing, loss chunk); resuming, the config's shape must be the checkpoint's, and
    with --init_from the config's explicit model fields may not change it."""
    if source is None:
        return cfg.model_config(meta["vocab_size"])
    saved = GPTConfig(**source["model_config"])
    if resume_path:
        _refuse_shape_change(saved, cfg.model_config(meta["vocab_size"]), f"{resume_path} holds a model of a "
                             f"different shape", "use the config it was trained with, or a new --run_name")
    else:
        _refuse_shape_change(saved, dataclasses.replace(saved, **cfg.model_overrides()),
                             f"--init_from={cfg.init_from} sets the model's shape, but the config changes it",
                             "drop those settings")
        tok = source.get("tokenizer") or {}
        if tok and (tok.get("tokenizer"), tok.get("vocab_size"), tok.get("chars")) != \
                (meta.get("tokenizer"), meta.get("vocab_size"), meta.get("chars")):
            raise ConfigError(f"--init_from={cfg.init_from} was trained on tokenizer {tok.get('tokenizer')!r} "
                              f"(vocab_size {tok.get('vocab_size')}) but {cfg.data_dir} holds "
                              f"{meta.get('tokenizer')!r} (vocab_size {meta.get('vocab_size')}); prepare the "
                              f"data with the checkpoint's tokenizer")
        if saved.vocab_size < meta["vocab_size"] <= saved.padded_vocab:
            # the data has ids past the model's, inside its padding rows (a nanoGPT char model has no
            # end-of-text id; ours adds one): they start as zero rows and train like the others
            saved = dataclasses.replace(saved, vocab_size=meta["vocab_size"])
    return dataclasses.replace(saved, **{k: getattr(cfg, k) for k in TRAINING_FIELDS})


def _refuse_shape_change(saved: GPTConfig, wanted: GPTConfig, what: str, fix: str):
    diff = shape_differences(saved, wanted)
    if diff:
        raise ConfigError(f"{what}: " + ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in diff.items())
                          + f"; {fix}")


def build(cfg: TrainConfig, env: distributed.Dist, model_cfg: GPTConfig, dtype, source: dict | None,
          resumed: bool):
    """(the raw model, the model the step calls, optimizer, scaler): the model sharded (FSDP)
    before the optimizer sees its parameters, then the checkpoint's state loaded into both,
    then compiled and wrapped (DDP)."""
    torch.manual_seed(cfg.seed)
    raw_model = GPT(model_cfg).to("cpu" if cfg.offload else env.device)  # offload: never whole on the GPU
    if cfg.parallelism == "fsdp":
        sharding.shard(raw_model, env, dtype, cfg.offload)
    optimizer = torch.optim.AdamW(raw_model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    if source:
        sharding.load_full_state(raw_model, optimizer if resumed else None,
                                 ckpt.clean_state_dict(source["model"]), source["optimizer"] if resumed else None)
        if resumed and source.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(source["scaler"])
        elif resumed and scaler.is_enabled():
            print("note: the checkpoint was not trained in float16; the loss scale starts afresh")
    return raw_model, sharding.wrap(raw_model, cfg.parallelism, env, cfg.compile), optimizer, scaler


def announce(run: Run, source: str, resumed: bool, why: str):
    """Rank 0: config.json, warnings, the start lines and the start record."""
    cfg, env, mc, state = run.cfg, run.env, run.model_cfg, run.state
    derived = dict(world_size=env.world, accumulation=run.accumulation, device=str(env.device),
                   tokens_per_step=run.tokens_per_step, params=count_params(mc), model_config=dataclasses.asdict(mc))
    write_json(os.path.join(cfg.run_dir, "config.json"), dict(config=cfg.to_dict(), derived=derived))
    epochs = run.tokens_per_step * cfg.max_steps / run.train_data.n_tokens
    if epochs > 20:
        print(f"warning: {epochs:,.0f} epochs over train.bin: the model will memorize it; "
              f"lower max_steps or prepare more data")
    if cfg.warmup_steps >= cfg.lr_decay_steps:
        print(f"warning: warmup_steps={cfg.warmup_steps} >= the decay end {cfg.lr_decay_steps}: "
              f"the learning rate never leaves warmup; lower --warmup_steps")
    print(f"world size {env.world} | device {env.device} | dtype {cfg.dtype} | compile {cfg.compile} | "
          f"parallelism {cfg.parallelism}{' + offload' if cfg.offload else ''} ({why})\n"
          f"micro-batch {cfg.micro_batch_size} x accumulation {run.accumulation} x {env.world} "
          f"{env.device_kind} = {cfg.global_batch_size} sequences = {run.tokens_per_step:,} tokens per step\n"
          f"{cfg.max_steps:,} steps = {run.tokens_per_step * cfg.max_steps:,} tokens = {epochs:.2f} epochs "
          f"of train.bin ({run.train_data.n_tokens:,} tokens)\nparameters {count_params(mc):,} | "
          f"{run.flops_per_token * run.tokens_per_step:.3e} FLOPs per step"
          + (f" | resuming from {source} at step {state.step:,}" if resumed
             else f" | weights and shape from {source}" if source else ""), flush=True)
    run.log.log(dict(kind="start", step=state.step, config=cfg.to_dict(), dtype=cfg.dtype, **derived))


def _progress(enabled: bool, start: int, total: int):
    if enabled:
        from tqdm import tqdm
        return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    class Quiet:  # tqdm's interface with plain prints, for log files and non-zero ranks
        def write(self, s):
            print(s, flush=True)

        def update(self, n):
            pass

        def close(self):
            pass
    return Quiet()


def cli():
    """The command line: an exit status, and for user errors and named faults a one-line
    message instead of a traceback."""
    try:
        sys.exit(main())
    except (ConfigError, FileNotFoundError, ValueError, ckpt.CheckpointWriteError,
            distributed.CollectiveFailure) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
