"""Train a GPT on a CPU, one GPU, or many GPUs (torchrun), with exact resume.

    python train.py config/shakespeare_cpu.py --max_steps=500
    torchrun --standalone --nproc_per_node=8 train.py config/production_8gpu.py
    python train.py config/production_8gpu.py --dry_run      # the plan, on any machine
    python train.py --report=checkpoints/<run>                # rewrite report.md

One step = one optimizer update over global_batch_size sequences, split into
micro-batches across ranks and accumulation steps. Step s trains on batch s, which
loader.TokenWindows draws as a pure function of (seed, s): a run resumed at step k
continues exactly as if it had never stopped.
"""
import contextlib
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint as ckpt
from atomic_files import write_json
from devices import autocast, pick_device, pick_dtype
from loader import TokenWindows, check_vocab, read_meta
from metrics import RunLog
from model import GPT, count_params, flops_per_token
from plan import batch_split, format_plan, make_plan, peak_flops
from report import write_report
from schedule import lr_at
from train_config import ConfigError, TrainConfig, help_text, load_config

SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_hidden", "bias")


def setup_distributed(cfg: TrainConfig):
    """(rank, world_size, device) from torchrun's environment, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank if world > 1 else None)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_reduce_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    # SUM then divide: gloo lacks ReduceOp.AVG in the older torch releases we support
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world
    return t


def check_output_dir(run_dir: str):
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_test.{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to {run_dir!r} ({e.strerror}); pick another --out_dir") from e


def check_same_shape(saved: dict, model_cfg, source: str):
    diff = {k: (saved[k], getattr(model_cfg, k)) for k in SHAPE_FIELDS if saved.get(k) != getattr(model_cfg, k)}
    if diff:
        raise ConfigError(f"{source} holds a model of a different shape: "
                          + ", ".join(f"{k} {a} there vs {b} here" for k, (a, b) in diff.items())
                          + "; use the config it was trained with, or a new --run_name")


def dry_run(cfg: TrainConfig, world: int):
    meta, train_tokens = None, None
    if os.path.isfile(os.path.join(cfg.data_dir, "meta.json")):
        meta = read_meta(cfg.data_dir)
        train_tokens = meta.get("train_tokens")
    vocab = meta["vocab_size"] if meta else 50257
    print(format_plan(make_plan(cfg, cfg.plan_gpus or world, vocab, train_tokens)))


@torch.no_grad()
def evaluate(model, windows: TokenWindows, cfg: TrainConfig, rank: int, world: int, device, autocast_ctx):
    """Mean loss over eval_batches fixed batches of micro_batch_size sequences, the same
    set whatever the world size: rank r evaluates batches r, r + world, ..."""
    model.eval()
    total = torch.zeros((), device=device)
    for k in range(rank, cfg.eval_batches, world):
        x, y = windows.batch(k, cfg.micro_batch_size, 0, cfg.micro_batch_size, device, stream=1)
        with autocast_ctx:
            total += model(x, y)[1].float()
    model.train()
    if world > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / cfg.eval_batches


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(help_text())  # no arguments: the defaults alone would start a 124M run
        return
    cfg = load_config(argv)
    if cfg.report:
        print(f"wrote {write_report(cfg.report)}")
        return
    if cfg.dry_run:
        dry_run(cfg, int(os.environ.get("WORLD_SIZE", "1")))
        return
    rank, world, device = setup_distributed(cfg)
    try:
        train(cfg, rank, world, device)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig, rank: int, world: int, device: torch.device):
    master = rank == 0
    # ---- every check that can fail runs before any long work
    meta = read_meta(cfg.data_dir)
    model_cfg = cfg.model_config(meta["vocab_size"])
    check_vocab(meta, model_cfg.vocab_size, cfg.data_dir)
    train_data = TokenWindows(cfg.data_dir, "train", model_cfg.block_size, meta, cfg.seed)
    val_data = TokenWindows(cfg.data_dir, "val", model_cfg.block_size, meta, cfg.seed)
    try:
        accum = batch_split(cfg.global_batch_size, cfg.micro_batch_size, world)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    dtype = pick_dtype(cfg.dtype, device)
    if dtype == torch.float16 and device.type == "cpu":
        print("warning: float16 on CPU is very slow; prefer --dtype=bfloat16 or float32")
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    run_dir = cfg.run_dir
    resume_path = None
    if cfg.resume:
        resume_path = ckpt.latest_checkpoint(run_dir) if cfg.resume in ("latest", "auto") else cfg.resume
        if resume_path is None and cfg.resume == "latest":
            raise ConfigError(f"--resume: no checkpoint_step_N.pt in {run_dir}; drop --resume to start fresh")
    check_output_dir(run_dir)  # on every rank, so a bad path stops them all, not only rank 0
    if master:
        ckpt.remove_stale_temp_files(run_dir)
    if not resume_path and ckpt.step_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints; add --resume to continue it "
                          f"or pick a new --run_name")

    # ---- model, optimizer, state
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    state = dict(step=0, best_val_loss=math.inf, evals_without_improvement=0, elapsed_s=0.0, skipped_steps=0)
    if resume_path or cfg.init_from:
        saved = ckpt.load_checkpoint(resume_path or cfg.init_from, map_location=device)
        check_same_shape(saved["model_config"], model_cfg, resume_path or cfg.init_from)
        model.load_state_dict(ckpt.clean_state_dict(saved["model"]))
        if resume_path:
            optimizer.load_state_dict(saved["optimizer"])
            if saved["scaler"] and scaler.is_enabled():
                scaler.load_state_dict(saved["scaler"])
            elif scaler.is_enabled():
                print("note: the checkpoint was not trained in float16; the loss scale starts afresh")
            state = {k: saved[k] for k in state}
        del saved
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast_ctx = autocast(device, dtype)

    tokens_per_step = cfg.global_batch_size * model_cfg.block_size
    step_flops = flops_per_token(model_cfg) * tokens_per_step
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10
    log = None
    if master:
        write_json(os.path.join(run_dir, "config.json"), cfg.to_dict())
        log = RunLog(run_dir, cfg.tensorboard)
        epochs = tokens_per_step * cfg.max_steps / train_data.n_tokens
        if epochs > 20:
            print(f"warning: {epochs:,.0f} epochs over train.bin: the model will memorize it; "
                  f"lower max_steps or prepare more data")
        if cfg.warmup_steps >= decay_steps:
            print(f"warning: warmup_steps={cfg.warmup_steps} >= the decay end {decay_steps}: "
                  f"the learning rate never leaves warmup; lower --warmup_steps")
        print(f"world size {world} | device {device} | dtype {str(dtype).replace('torch.', '')} | "
              f"compile {use_compile}\nmicro-batch {cfg.micro_batch_size} x accumulation {accum} x "
              f"{world} ranks = {cfg.global_batch_size} sequences = {tokens_per_step:,} tokens per step\n"
              f"{cfg.max_steps:,} steps = {tokens_per_step * cfg.max_steps:,} tokens = {epochs:.2f} epochs "
              f"of train.bin ({train_data.n_tokens:,} tokens)\nparameters {count_params(model_cfg):,} | "
              f"{step_flops:.3e} FLOPs per step"
              + (f" | resuming from {resume_path} at step {state['step']:,}" if resume_path else ""))
        log.log(dict(kind="start", step=state["step"], time=time.time(), config=cfg.to_dict(),
                     model_config=vars(model_cfg), params=count_params(model_cfg), world_size=world,
                     device=str(device), dtype=str(dtype).replace("torch.", ""),
                     tokens_per_step=tokens_per_step, accumulation=accum))

    def save(path_name: str, best: bool = False):
        if world > 1:
            dist.barrier()
        if master:
            path = os.path.join(run_dir, path_name)
            ckpt.save_checkpoint(dict(
                step=step, model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(), model_config=vars(model_cfg), config=cfg.to_dict(),
                tokenizer=meta, **{k: v for k, v in state.items() if k != "step"}), path)
            if not best:
                ckpt.prune(run_dir, cfg.keep_last)
            log.log(dict(kind="checkpoint", step=step, path=path, best=best, elapsed_s=state["elapsed_s"]))
        if world > 1:
            dist.barrier()

    def run_eval():
        """Evaluate, save best_model.pt on improvement; True when early stopping should stop the run."""
        inner = model.module if world > 1 else model  # no DDP hooks: evaluation has no backward
        val = evaluate(inner, val_data, cfg, rank, world, device, autocast_ctx)
        train_est = evaluate(inner, train_data, cfg, rank, world, device, autocast_ctx)
        improved = val < state["best_val_loss"]
        if step > 0:  # the untrained model is a baseline, not a best model
            state["evals_without_improvement"] = 0 if improved else state["evals_without_improvement"] + 1
            if improved:
                state["best_val_loss"] = val
                save("best_model.pt", best=True)
        if master:
            log.log(dict(kind="eval", step=step, val_loss=val, val_ppl=math.exp(min(val, 50)),
                         train_loss=train_est, elapsed_s=state["elapsed_s"]))
            bar.write(f"step {step:,}: val loss {val:.4f} (ppl {math.exp(min(val, 50)):.2f}) | "
                      f"train loss {train_est:.4f}" + (" | best" if improved and step > 0 else ""))
        return cfg.early_stopping_patience > 0 and state["evals_without_improvement"] >= cfg.early_stopping_patience

    step = state["step"]
    # a bar only on a terminal: in a log file its redraws bury the log lines
    bar = _progress(master and cfg.progress_bar and sys.stderr.isatty(), step, cfg.max_steps)
    end_reason = "max_steps"
    if step == 0:
        run_eval()
    t_last, tokens_since, t_start = time.time(), 0, time.time() - state["elapsed_s"]
    while True:
        lr = lr_at(step, cfg.learning_rate, min_lr, cfg.warmup_steps, decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        last = step >= cfg.max_steps or end_reason == "early_stopping"
        loss_sum = torch.zeros((), device=device)
        with torch.set_grad_enabled(not last):  # the final batch is only measured, not trained on
            for micro in range(accum):
                index = micro * world + rank  # this micro-batch's place in the global batch
                x, y = train_data.batch(step, cfg.global_batch_size, index * cfg.micro_batch_size,
                                        cfg.micro_batch_size, device)
                # Dropout masks are a pure function of (seed, step, index) like the batches:
                # resume needs no RNG state, and 1 GPU x 8 accumulation equals 8 GPUs.
                torch.manual_seed(int(np.random.SeedSequence([cfg.seed, step, index]).generate_state(1)[0]))
                sync = world == 1 or micro == accum - 1 or last
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast_ctx:
                    loss = model(x, y)[1]
                loss_sum += loss.detach()
                if not last:
                    scaler.scale(loss / accum).backward()
        grad_norm = torch.tensor(math.nan)
        if not last:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(  # a tensor: .item() only when logged
                raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            scale_before = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.is_enabled() and scaler.get_scale() < scale_before:
                state["skipped_steps"] += 1  # inf/NaN gradients: GradScaler skipped this update
            optimizer.zero_grad(set_to_none=True)
        tokens_since += tokens_per_step if not last else 0
        if (last or step % cfg.log_interval == 0 or step == cfg.warmup_steps or step % cfg.save_interval == 0
                or step in cfg.save_steps):  # the report's rows need the loss at these steps
            all_reduce_mean(loss_sum, world)
            grad_norm = None if last else grad_norm.item()  # the final batch trains nothing
            now = time.time()
            state["elapsed_s"] = now - t_start
            tok_s = None if last else tokens_since / max(now - t_last, 1e-9)  # the final batch is only measured
            t_last, tokens_since = now, 0
            mfu = flops_per_token(model_cfg) * tok_s / (peak * world) if peak and tok_s else None
            mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
            if master:
                rec = dict(kind="train", step=step, loss=loss_sum.item() / accum, lr=lr,
                           grad_norm=grad_norm, tokens_per_s=tok_s, mfu=mfu, peak_mem_gib=mem,
                           loss_scale=scaler.get_scale() if scaler.is_enabled() else None,
                           skipped_steps=state["skipped_steps"], tokens=step * tokens_per_step,
                           elapsed_s=state["elapsed_s"])
                log.log(rec)
                parts = [f"step {step:,}/{cfg.max_steps:,}", f"loss {rec['loss']:.4f}", f"lr {lr:.2e}"]
                if not last:
                    parts += [f"grad {grad_norm:.3f}", f"{tok_s:,.0f} tok/s",
                              f"mfu {mfu:.1%}" if mfu is not None else "mfu n/a"]
                parts.append(f"mem {mem:.2f} GiB")
                if scaler.is_enabled():
                    parts.append(f"scale {rec['loss_scale']:.0f}, skipped {state['skipped_steps']}")
                bar.write(" | ".join(parts))
        if last:
            break
        step += 1
        bar.update(1)
        state["step"] = step
        state["elapsed_s"] = time.time() - t_start
        t_pause = time.time()
        if step % cfg.eval_interval == 0 or step in cfg.save_steps or step == cfg.max_steps:
            if run_eval():
                end_reason = "early_stopping"
        if (step % cfg.save_interval == 0 or step in cfg.save_steps or step == cfg.max_steps
                or end_reason == "early_stopping"):
            save(f"checkpoint_step_{step}.pt")
        t_last += time.time() - t_pause  # tokens/s measures training, not evals and saves
    bar.close()
    if master:
        log.log(dict(kind="end", step=step, elapsed_s=state["elapsed_s"], reason=end_reason))
        log.close()
        print(f"done: {end_reason} at step {step:,}; best val loss {state['best_val_loss']:.4f}; "
              f"report: {write_report(run_dir)}")


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


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, FileNotFoundError, ValueError) as e:  # user errors: no traceback needed
        sys.exit(f"error: {e}")
