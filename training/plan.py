"""The --dry_run planner: what a run will cost before it starts.

make_plan() does arithmetic only; the model is built on the meta device (no memory)
so the 1.2B plan takes well under a second. Every figure is per the run's config:
batch split, FLOPs, an itemized per-GPU memory estimate and the wall time at an
assumed MFU on A100 and H100.
"""

import torch

from errors import BadInput
from model import GPT, GPTConfig, count_params, describe, float8_layers, flops_per_token, n_linear
from parallel.devices import PEAK_FLOPS
from text.loader import drawn
from training.config import TrainConfig
from training.memory import (
    CHECKPOINTING_NAMES,
    RESERVE_GIB,
    WAYS,
    GiB,
    Way,
    checkpoint_bytes,
    estimate,
    fits,
    fp8_weight_count,
    param_counts,
)
from training.resolve import Machine, resolve


def cost_parts(n_stored: int, world_size: int, accumulation: int, half: bool) -> dict:
    """What each part of a way (Way.parts) costs per step, beyond DDP's all-reduce of the
    fp32 gradients: {part: text}."""
    gb, p_bytes = 1e9, 2 if half else 4
    shard = 4 * n_stored / world_size / gb
    return {
        "FSDP": (
            "none on one process (FSDP's gathers are local copies)"
            if world_size == 1
            else f"all-gather {2 * accumulation * p_bytes * n_stored / gb:.2f} GB of parameters and "
            f"reduce-scatter {4 * n_stored / gb:.2f} GB of gradients per step, mostly overlapped"
        ),
        CHECKPOINTING_NAMES["selective"]: (
            "recomputes each block's norms, GELU or SwiGLU, rotary, dropout and casts; no matmul"
        ),
        CHECKPOINTING_NAMES["full"]: "+1 forward of every block (~+33% compute)",
        "offload": (
            f"PCIe: {2 * accumulation * shard:.2f} GB of parameters in and {shard:.2f} GB of gradients out "
            f"per step, AdamW on the CPU ({16 * n_stored / world_size / 2**30:.1f} GiB of pinned CPU memory)"
        ),
    }


def way_costs(way: Way, parts: dict) -> str:
    """A way's extra compute or traffic per step (cost_parts), beyond DDP's."""
    return "; ".join(parts[part] for part in way.parts) or "none"


def _ways(cfg: TrainConfig, world_size: int, model_cfg: GPTConfig, cards: list, costs: dict) -> list:
    """Each of WAYS with its memory per GPU, whether it fits each card, and its costs."""
    ways = []
    for way in WAYS:
        memory = estimate(cfg, world_size, model_cfg, way)
        ways.append(
            dict(
                way=way,
                memory=memory,
                fits=[fits(memory["total"], c) for c in cards],
                costs=way_costs(way, costs),
            )
        )
    return ways


def _wall_clock(cfg: TrainConfig, world_size: int, total_flops: float, total_tokens: int) -> dict:
    """The run's time on each reference card at cfg.plan_mfu: arithmetic, not a measurement."""
    wall = {}
    for name in ("A100", "H100 SXM"):
        seconds = total_flops / (PEAK_FLOPS[name] * cfg.plan_mfu * world_size)
        wall[name] = {
            "peak": PEAK_FLOPS[name],
            "seconds": seconds,
            "steps_per_s": cfg.max_steps / seconds,
            "tokens_per_s": total_tokens / seconds,
        }
    return wall


def _fp8_parts(model_cfg: GPTConfig, flops_per_token: int) -> dict:
    """How much of the model --fp8 would train in float8: layers, weights, share of FLOPs."""
    with torch.device("meta"):
        meta_model = GPT(model_cfg)
    fp8_weights = fp8_weight_count(model_cfg)
    return {
        "fp8_layers": len(float8_layers(meta_model)),
        "linear_layers": n_linear(meta_model),
        "fp8_weights": fp8_weights,
        "fp8_flops": 6 * fp8_weights / flops_per_token,  # 6 FLOPs per weight per token
    }


def make_plan(
    cfg: TrainConfig, world_size: int, vocab_size: int, train_tokens, model_cfg: GPTConfig | None = None
) -> dict:
    """Everything --dry_run prints, as plain numbers (format_plan renders it). The config is
    resolved as a run on the first of plan_gpu_memory_gib's cards would resolve it.
    train_tokens: one dataset's train tokens (None: unknown, not prepared yet), or
    {data_dir: (weight, its train tokens or None)} of a mixture. model_cfg: the model's shape
    where it is not the config's (--init_from's source); vocab_size is then unused."""
    if world_size < 1:
        raise BadInput(f"world_size must be >= 1, got {world_size}")
    if not 0 < cfg.plan_mfu <= 1:
        raise BadInput(f"plan_mfu is a fraction of peak in (0, 1], got {cfg.plan_mfu}")
    resolved = resolve(
        cfg,
        Machine.planned(cfg.device, world_size, cfg.plan_gpu_memory_gib[0]),
        model_cfg or cfg.model_config(vocab_size),
    )
    source = cfg.init_from if model_cfg is not None else None
    cfg, model_cfg = resolved.cfg, resolved.model_cfg
    n_stored, _ = param_counts(model_cfg)
    accumulation = cfg.accumulation(world_size)
    tokens_per_step, total_tokens = resolved.tokens_per_step, resolved.total_tokens
    one_dataset = {"": (1.0, train_tokens)}
    datasets = drawn(total_tokens, train_tokens if isinstance(train_tokens, dict) else one_dataset)
    fpt = flops_per_token(model_cfg)
    total_flops = fpt * total_tokens
    dtype = cfg.dtype

    cards = [gib * GiB for gib in cfg.plan_gpu_memory_gib]
    costs = cost_parts(n_stored, world_size, accumulation, dtype != "float32")
    ways = _ways(cfg, world_size, model_cfg, cards, costs)
    fastest = [next((w["way"] for w in ways if w["fits"][i]), None) for i in range(len(cards))]
    this_way, why = resolved.way, resolved.why
    wall = _wall_clock(cfg, world_size, total_flops, total_tokens)

    return {
        "run_name": cfg.run_name,
        "world_size": world_size,
        "dtype": dtype,
        "model": f"--init_from={source}" if source else cfg.model,
        "n_layer": model_cfg.n_layer,
        "n_head": model_cfg.n_head,
        "n_embd": model_cfg.n_embd,
        "mlp_dim": model_cfg.mlp_dim,
        "architecture": describe(model_cfg),
        "tied": model_cfg.tie_embeddings,
        "block_size": model_cfg.block_size,
        "vocab_size": model_cfg.vocab_size,
        "padded_vocab": model_cfg.padded_vocab,
        "dropout": model_cfg.dropout,
        "loss_chunk": model_cfg.loss_chunk,
        "compile": cfg.compile,
        "params": count_params(model_cfg),
        "params_non_embedding": count_params(model_cfg, non_embedding=True),
        "global_batch_size": cfg.global_batch_size,
        "micro_batch_size": cfg.micro_batch_size,
        "accumulation": accumulation,
        "tokens_per_step": tokens_per_step,
        "max_steps": cfg.max_steps,
        "total_tokens": total_tokens,
        "datasets": datasets,
        "train_tokens": datasets[0]["train_tokens"] if len(datasets) == 1 else None,
        "epochs": datasets[0]["epochs"] if len(datasets) == 1 else None,
        "flops_per_token": fpt,
        "flops_per_step": fpt * tokens_per_step,
        "total_flops": total_flops,
        "cards_gib": list(cfg.plan_gpu_memory_gib),
        "ways": ways,
        "fastest": fastest,
        "costs": costs,
        "fp8": cfg.fp8,
        **_fp8_parts(model_cfg, fpt),
        "this_way": this_way,
        "this_way_why": why,
        "memory": next(w["memory"] for w in ways if w["way"] == this_way),
        "checkpoint_bytes": checkpoint_bytes(model_cfg, cfg.optimizer),
        "n_stored": n_stored,
        "mfu": cfg.plan_mfu,
        "wall_time": wall,
    }


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:9.2f}"


def _memory_lines(plan: dict) -> list[str]:
    cards = plan["cards_gib"]
    chunk = (
        f"loss in chunks of {plan['loss_chunk']:,} positions" if plan["loss_chunk"] else "all logits at once"
    )
    lines = [
        f"Memory per GPU for each way to run it, GiB ({plan['dtype']}, micro-batch "
        f"{plan['micro_batch_size']} x {plan['block_size']:,}, {plan['world_size']} GPUs x "
        f"{plan['accumulation']} accumulation, {chunk}; {'compiled' if plan['compile'] else 'eager'}; excludes the CUDA context and "
        f"allocator slack)",
        f"  {'way':44}{'total':>8}" + "".join(f"{f'{c:g} GiB':>9}" for c in cards),
    ]
    for w in plan["ways"]:
        marks = "".join(
            f"{('fits*' if plan['fastest'][i] == w['way'] else 'fits') if ok else 'over':>9}"
            for i, ok in enumerate(w["fits"])
        )
        lines.append(f"  {w['way'].name:44}{w['memory']['total'] / GiB:8.2f}{marks}")
    lines.append(f"  fits: the estimate plus {RESERVE_GIB} GiB for the CUDA context and allocator slack")
    for card, way in zip(cards, plan["fastest"]):
        lines.append(
            f"  * fastest that fits {card:g} GiB: "
            + (
                way.flags
                if way
                else "none; lower micro_batch_size (the global batch stays: accumulation grows)"
            )
        )
    ddp_traffic = (
        f"DDP all-reduces {4 * plan['n_stored'] / 1e9:.2f} GB of gradients per step"
        if plan["world_size"] > 1
        else "one process: no traffic"
    )
    lines.append(f"  Costs beyond DDP, per step ({ddp_traffic}):")
    lines += [f"    {name}: {text}" for name, text in plan["costs"].items()]
    lines.append(
        f"    FP8 (--fp8=True, H100/H200 and newer; {'on' if plan['fp8'] else 'off'} here): float8 matmuls in "
        f"{plan['fp8_layers']} of {plan['linear_layers']} linear layers, {plan['fp8_flops']:.0%} of the FLOPs; "
        f"no 16-bit copies of their weights under DDP ({2 * plan['fp8_weights'] / GiB:.2f} GiB less); "
        f"speed not yet measured"
    )
    lines.append(
        f"  This config runs {plan['this_way'].name} ({plan['this_way_why']}); "
        f"its peak, at the {plan['memory']['moment']}:"
    )
    for label, value in plan["memory"]["items"].items():
        lines.append(f"    {label + ':':46}{_gib(value)}")
    lines.append(f"    {'total:':46}{_gib(plan['memory']['total'])}")
    size = plan["checkpoint_bytes"]
    lines.append(
        f"  Checkpoint: {size / 1e9:.2f} GB per save (fp32 weights + optimizer state); writing it takes "
        f"{size / 1e9:.0f} s at 1 GB/s, {size / 2e8:.0f} s at 200 MB/s"
    )
    return lines


def format_plan(plan: dict) -> str:
    """Aligned `label: value` lines, grouped, about 50 lines."""

    def row(label, value):
        return f"  {label + ':':22}{value}"

    gpus = plan["world_size"]
    epochs = (
        f"{plan['epochs']:.3f} of {plan['train_tokens']:,} train tokens"
        if plan["epochs"] is not None
        else "per dataset:"
        if len(plan["datasets"]) > 1
        else "unknown (data not prepared)"
    )
    precision = (
        "float32"
        if plan["dtype"] == "float32"
        else f"{plan['dtype']} autocast, fp32 master weights"
        + (", float8 matmuls (--fp8)" if plan["fp8"] else "")
    )
    lines = [
        "Run",
        row("name", plan["run_name"]),
        row("GPUs", f"{gpus}"),
        row("precision", precision),
        "Model",
        row(
            "preset",
            f"{plan['model']}: {plan['n_layer']} layers x {plan['n_embd']:,} wide, "
            f"{plan['n_head']} heads, MLP {plan['mlp_dim']:,}, context {plan['block_size']:,}",
        ),
        row("parts", plan["architecture"]),
        row("vocab", f"{plan['vocab_size']:,} (embedding padded to {plan['padded_vocab']:,} rows)"),
        row(
            "parameters",
            f"{plan['params']:,} (" + ("tied head counted once)" if plan["tied"] else "untied head)"),
        ),
        row("non-embedding", f"{plan['params_non_embedding']:,}"),
        "Batch",
        row(
            "global batch",
            f"{plan['global_batch_size']:,} sequences = {plan['micro_batch_size']} micro "
            f"x {gpus} GPUs x {plan['accumulation']} accumulation",
        ),
        row("tokens / step", f"{plan['tokens_per_step']:,}"),
        row("steps", f"{plan['max_steps']:,}"),
        row("total tokens", f"{plan['total_tokens']:,} ({plan['total_tokens'] / 1e9:,.1f}B)"),
        row("epochs", epochs),
        *[
            f"    {d['data_dir']}: weight {d['weight']:.2f}, {d['tokens']:,.0f} tokens, "
            + (
                f"{d['epochs']:.3f} epochs of {d['train_tokens']:,}"
                if d["epochs"] is not None
                else "epochs unknown (not prepared)"
            )
            for d in plan["datasets"]
            if len(plan["datasets"]) > 1
        ],
        "Compute",
        row("FLOPs / token", f"{plan['flops_per_token']:,} (6N + attention)"),
        row("FLOPs / step", f"{plan['flops_per_step']:.4g}"),
        row("total FLOPs", f"{plan['total_flops']:.4g}"),
        *_memory_lines(plan),
        f"Wall time at {plan['mfu']:.0%} MFU (total FLOPs / (peak x MFU x {gpus} GPUs)"
        + (", the bf16 peak with --fp8 too)" if plan["fp8"] else ")"),
    ]
    for name, w in plan["wall_time"].items():
        label = f"{gpus} x {name} ({w['peak'] / 1e12:.0f} TFLOP/s)"
        sec = w["seconds"]
        span = (
            f"{sec / 3600:,.1f} h = {sec / 86400:,.2f} days"
            if sec >= 3600
            else f"{sec / 60:.1f} min"
            if sec >= 60
            else f"{sec:.1f} s"
        )
        lines.append(
            f"  {label + ':':34}{span}, {w['steps_per_s']:.3g} steps/s, {w['tokens_per_s']:,.0f} tokens/s"
        )
    return "\n".join(lines)
