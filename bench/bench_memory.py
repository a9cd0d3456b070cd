"""Peak training memory beside the planner's estimate: the 16 GB plan's table.

For GPT-2 small (124M), medium (350M) and the XL-shaped ~1B model, at 8 x 512 tokens per
step: the fp32 baseline, each optimization alone (bf16 autocast, half the micro-batch with
twice the accumulation, full and selective activation checkpointing, FSDP, FSDP + offload)
and all combined.

    python bench/bench_memory.py                  # on a GPU: measured peaks, a 16 GiB card emulated
    python bench/bench_memory.py --steps=50       # ... and the combined 1B run trains 50 steps
    python bench/bench_memory.py --device=cpu     # the planner's rows; measures small models only

On a GPU each case runs two training steps (train.train_step, as a run does) under
torch.cuda.set_per_process_memory_fraction(16 GiB / the card), and reports
torch.cuda.max_memory_allocated of the second step; a case that does not fit says OOM.
A CPU has no allocator statistics: there, the profiler's memory timeline of the second step
gives the peak of a small model (4 x 256, vocab 50,257) under each case that runs on a CPU.
Goals (GPU): measured within 10% of the estimate; the combined 1B case under 14 GiB.
"""

import argparse
import dataclasses
import json
import os
import tempfile

import torch

import train
from model import GPT, GPTConfig, preset_config
from parallel import (
    distributed,
    sharding,
)
from parallel.devices import autocast
from training.config import TrainConfig
from training.memory import GiB, Way, estimate

TOKENS = (8, 512)  # the plan's first milestone: 8 sequences of 512 tokens per step
CASES = {  # name: (dtype, micro-batch divisor, way)
    "fp32 baseline": ("float32", 1, Way("ddp")),
    "bf16 autocast": ("bfloat16", 1, Way("ddp")),
    "half micro-batch, 2x accumulation": ("float32", 2, Way("ddp")),
    "activation checkpointing": ("float32", 1, Way("ddp", "full")),
    "selective checkpointing": ("float32", 1, Way("ddp", "selective")),
    "FSDP (one GPU)": ("float32", 1, Way("fsdp")),
    "FSDP + offload": ("float32", 1, Way("fsdp", False, True)),
    "all combined": ("bfloat16", 2, Way("fsdp", "full", True)),
}
MODELS = {"gpt2-124m": "gpt2-124m", "gpt2-350m": "gpt2-350m", "~1B (GPT-2 XL shape)": "gpt2-1.5b"}


def train_config(
    preset: str, model_cfg: GPTConfig, dtype: str, divisor: int, way: Way, device: str
) -> TrainConfig:
    batch, seq = TOKENS
    return TrainConfig(
        model=preset,
        block_size=seq,
        n_layer=model_cfg.n_layer,
        n_head=model_cfg.n_head,
        n_embd=model_cfg.n_embd,
        global_batch_size=batch,
        micro_batch_size=batch // divisor,
        dtype=dtype,
        device=device,
        compile=False,
        loss_chunk=model_cfg.loss_chunk,  # measure() runs eager
        activation_checkpointing=way.checkpointing,
        parallelism=way.parallelism,
        offload=way.offload,
    )


def measure(cfg: TrainConfig, model_cfg: GPTConfig, env, steps: int) -> tuple[float | None, list]:
    """(peak bytes of the last step, the losses), or (None, []) when it runs out of memory."""
    dtype = getattr(torch, cfg.dtype)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(model_cfg, activation_checkpointing=cfg.activation_checkpointing))
    model = model.to("cpu" if cfg.offload else env.device)
    if cfg.parallelism == "fsdp":
        sharding.shard(model, env, dtype, cfg.offload)
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.1), lr=3e-4, fused=True)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    accum = cfg.global_batch_size // cfg.micro_batch_size
    data = torch.randint(0, model_cfg.vocab_size, (64, cfg.micro_batch_size, model_cfg.block_size + 1))
    losses, peak = [], None
    try:
        for step in range(steps):
            last = step == steps - 1
            if env.device.type == "cuda" and last:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(env.device)
            batches = [
                (
                    data[(step * accum + i) % 64, :, :-1].to(env.device),
                    data[(step * accum + i) % 64, :, 1:].to(env.device),
                    i,
                )
                for i in range(accum)
            ]
            with _cpu_peak() if env.device.type == "cpu" and last else _no_peak() as cpu:
                values = train.train_step(
                    model, [optimizer], scaler, batches, 1.0, autocast(env.device, dtype), env
                )
            losses.append(values.loss.item())
            if last:
                peak = torch.cuda.max_memory_allocated(env.device) if env.device.type == "cuda" else cpu.peak
    except torch.OutOfMemoryError:
        return None, []
    finally:
        del model, optimizer
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
    return peak, losses


class _no_peak:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _cpu_peak:
    """The peak of the profiler's memory timeline over the block (CPU tensors)."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        )
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "timeline.json")
            self.prof.export_memory_timeline(path, device="cpu")
            with open(path) as fh:
                _, sizes = json.load(fh)
        self.peak = max(sum(s) for s in sizes)
        return False


def rows(env, steps: int, card_gib: float, device: str) -> list[str]:
    out = ["| model | case | planner (GiB) | measured (GiB) | measured / planner |", "|---|---|---|---|---|"]
    models = MODELS if device == "cuda" else {"4 x 256 (CPU-sized)": "small-cpu"}
    for label, preset in models.items():
        model_cfg = preset_config(
            preset,
            vocab_size=50257,
            block_size=TOKENS[1],
            loss_chunk=1024,
            **({"n_embd": 256} if device == "cpu" else {}),
        )
        for case, (dtype, divisor, way) in CASES.items():
            cfg = train_config(preset, model_cfg, dtype, divisor, way, device)
            planned = estimate(cfg, 1, model_cfg, way)["total"]
            measured = "-"  # offload needs a GPU
            if device == "cuda" or not way.offload:
                peak, losses = measure(
                    cfg, model_cfg, env, steps if case == "all combined" and device == "cuda" else 2
                )
                measured = "OOM" if peak is None else f"{peak / GiB:.3f}"
                if peak is not None and case == "all combined" and len(losses) > 2:
                    print(
                        f"{label}, all combined: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} "
                        f"steps, peak {peak / GiB:.2f} GiB",
                        flush=True,
                    )
            ratio = f"{float(measured) * GiB / planned:.2f}" if measured not in ("-", "OOM") else "-"
            out.append(f"| {label} | {case} | {planned / GiB:.3f} | {measured} | {ratio} |")
            print(out[-1], flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=2, help="steps of the combined case (the others run 2)")
    p.add_argument("--card_gib", type=float, default=16.0, help="the card to emulate on a larger GPU")
    a = p.parse_args()
    env = distributed.setup(
        distributed.local_device(a.device), 600, join=True
    )  # FSDP shards over a mesh of one
    if env.device.type == "cuda":
        total = torch.cuda.get_device_properties(env.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.card_gib * GiB / total), env.device)
        print(f"{torch.cuda.get_device_name(env.device)}: emulating a {a.card_gib:g} GiB card")
    print(
        f"tokens per step {TOKENS[0]} x {TOKENS[1]}; loss in chunks of 1,024 positions; planner: training.memory.estimate"
    )
    try:
        rows(env, max(2, a.steps), a.card_gib, env.device.type)
    finally:
        distributed.teardown(env, clean=True)
    if env.device.type == "cpu":
        print("\nPlanner rows for the plan's models (a GPU measures them):")
        print("| model | case | planner (GiB) |\n|---|---|---|")
        for label, preset in MODELS.items():
            model_cfg = preset_config(preset, vocab_size=50257, block_size=TOKENS[1], loss_chunk=1024)
            for case, (dtype, divisor, way) in CASES.items():
                cfg = train_config(preset, model_cfg, dtype, divisor, way, "cuda")
                print(f"| {label} | {case} | {estimate(cfg, 1, model_cfg, way)['total'] / GiB:.2f} |")


if __name__ == "__main__":
    main()
