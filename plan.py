"""The --dry_run planner: what a run will cost before it starts.

make_plan() does arithmetic only; the model is built on the meta device (no memory)
so the 1.2B plan takes well under a second. Every figure is per the run's config:
batch split, FLOPs, an itemized per-GPU memory estimate and the wall time at an
assumed MFU on A100 and H100.
"""
import torch

from devices import PEAK_FLOPS
from model import GPT, count_params, flops_per_token
from train_config import TrainConfig

GiB = 1024 ** 3

# Cards the memory total is compared against.
MEMORY_LIMITS = [(40, "A100-40GB"), (80, "A100/H100-80GB")]


def block_activation_bytes(mc, batch: int, seq: int, act_bytes: int) -> int:
    """Bytes one transformer block saves for backward on one micro-batch, eager PyTorch.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", eq. 1) itemize s*b*h*(34 + 5*a*s/h) bytes for 16-bit activations. Adapted
    to this model (checked against saved_tensors_hooks in tests/test_plan.py):
    - no 5*a*s/h term: flash/efficient SDPA keep q, k, v, the output and a logsumexp, never
      the T x T scores; attention-prob dropout is replayed from an RNG seed, no mask;
    - the two LayerNorm inputs are the residual stream, which stays fp32 under autocast
      with fp32 params: 4 B each, not 2 (+4 sbh);
    - the MLP terms scale with mlp_dim, not a fixed 4h;
    - the two residual dropout masks (1 B bool each) exist only when dropout > 0.
    """
    s, b, f = seq, batch, mc.mlp_dim
    sb, sbh = s * b, s * b * mc.n_embd
    resid = 4  # fp32 residual stream (autocast leaves it fp32; fp32 runs are fp32 anyway)
    total = 2 * resid * sbh + 2 * 2 * 4 * sb  # ln_1, ln_2 inputs + their fp32 mean/rstd
    total += act_bytes * sbh  # c_attn input (ln_1 output)
    total += 3 * act_bytes * sbh + 4 * mc.n_head * sb  # q, k, v + fp32 logsumexp
    total += act_bytes * sbh  # attention output = attn.c_proj input
    total += act_bytes * sbh  # mlp.c_fc input (ln_2 output)
    total += 2 * act_bytes * sb * f  # GELU input and GELU output (= mlp.c_proj input)
    if mc.dropout > 0:
        total += 2 * sbh  # bool masks after attn.c_proj and mlp.c_proj
    return total


def memory_estimate(mc, n_stored: int, n_matrix: int, micro_batch: int, dtype: str,
                    world_size: int, checkpointing: bool) -> dict:
    """Itemized per-GPU bytes at the peak (the start of backward, with gradients from
    earlier micro-steps held). n_stored counts every stored parameter element (padding
    rows included); n_matrix the elements of 2-D weights, which autocast casts."""
    half = dtype in ("bfloat16", "float16")
    act = 2 if half else 4
    s, b, h = mc.block_size, micro_batch, mc.n_embd
    one_block = block_activation_bytes(mc, b, s, act)
    # Around the stack: embedding dropout mask, ln_f input (fp32) + stats, head input.
    edges = (s * b * h if mc.dropout > 0 else 0) + 4 * s * b * h + 8 * s * b + act * s * b * h
    block_matrix = (n_matrix - mc.padded_vocab * h - mc.block_size * h) // mc.n_layer
    items = {
        "weights (fp32)": 4 * n_stored,
        "gradients (fp32)": 4 * n_stored,
        "AdamW state (fp32 m, v)": 8 * n_stored,
    }
    if world_size > 1:
        # DDP copies gradients into its own fp32 buckets (gradient_as_bucket_view=False).
        items["DDP gradient buckets"] = 4 * n_stored
    if half:
        # autocast's 16-bit weight copies live while backward needs them: all of them
        # without checkpointing; with it, the tied head's plus one recomputed block's.
        # (wpe is 2-D but only indexed, never cast.)
        copies = n_matrix - mc.block_size * h if not checkpointing else mc.padded_vocab * h + block_matrix
        items["16-bit weight copies (autocast)"] = 2 * copies
    if checkpointing:
        # Each block keeps only its fp32 input; backward recomputes one block at a time.
        # Summed with the logits this is an upper bound: they are freed before recompute.
        items["activations (block inputs)"] = mc.n_layer * 4 * s * b * h + edges
        items["activations (1 block recomputed)"] = one_block
    else:
        items["activations (all blocks)"] = mc.n_layer * one_block + edges
    # Logits: the 16-bit (padded) logits the loop holds, the fp32 log-softmax saved for the
    # loss, and during its backward the fp32 gradients of its output and input together.
    logit_bytes = (act * mc.padded_vocab + 12 * mc.vocab_size) if half else 12 * mc.vocab_size
    items["logits + loss"] = s * b * logit_bytes
    return {"items": items, "total": sum(items.values())}


def make_plan(cfg: TrainConfig, world_size: int, vocab_size: int, train_tokens: int | None) -> dict:
    """Everything --dry_run prints, as plain numbers (format_plan renders it)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 < cfg.plan_mfu <= 1:
        raise ValueError(f"plan_mfu is a fraction of peak in (0, 1], got {cfg.plan_mfu}")
    mc = cfg.model_config(vocab_size)
    with torch.device("meta"):
        model = GPT(mc)
    n_stored = sum(p.numel() for p in model.parameters())  # the tied matrix once
    n_matrix = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    n_params = count_params(mc)
    if n_stored - (mc.padded_vocab - mc.vocab_size) * mc.n_embd != n_params:
        raise RuntimeError(f"model has {n_stored:,} parameters but count_params says {n_params:,}")

    accumulation = cfg.accumulation(world_size)
    tokens_per_step = cfg.global_batch_size * mc.block_size
    total_tokens = tokens_per_step * cfg.max_steps
    fpt = flops_per_token(mc)
    total_flops = fpt * total_tokens
    dtype = cfg.resolved("cpu" if cfg.device == "cpu" else "cuda").dtype  # a plan is for GPUs

    memory = {}
    for ckpt in (True, False):
        memory[ckpt] = memory_estimate(mc, n_stored, n_matrix, cfg.micro_batch_size, dtype,
                                       world_size, ckpt)

    wall = {}
    for name in ("A100", "H100 SXM"):
        seconds = total_flops / (PEAK_FLOPS[name] * cfg.plan_mfu * world_size)
        wall[name] = {"peak": PEAK_FLOPS[name], "seconds": seconds,
                      "steps_per_s": cfg.max_steps / seconds, "tokens_per_s": total_tokens / seconds}

    return {
        "run_name": cfg.run_name, "world_size": world_size, "dtype": dtype,
        "activation_checkpointing": cfg.activation_checkpointing,
        "model": cfg.model, "n_layer": mc.n_layer, "n_head": mc.n_head, "n_embd": mc.n_embd,
        "mlp_dim": mc.mlp_dim, "block_size": mc.block_size, "vocab_size": mc.vocab_size,
        "padded_vocab": mc.padded_vocab, "dropout": mc.dropout,
        "params": n_params, "params_non_embedding": count_params(mc, non_embedding=True),
        "global_batch_size": cfg.global_batch_size, "micro_batch_size": cfg.micro_batch_size,
        "accumulation": accumulation, "tokens_per_step": tokens_per_step,
        "max_steps": cfg.max_steps, "total_tokens": total_tokens, "train_tokens": train_tokens,
        "epochs": total_tokens / train_tokens if train_tokens else None,
        "flops_per_token": fpt, "flops_per_step": fpt * tokens_per_step, "total_flops": total_flops,
        "memory": memory, "mfu": cfg.plan_mfu, "wall_time": wall,
    }


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:9.2f}"


def _memory_lines(plan: dict) -> list[str]:
    on, off = plan["memory"][True], plan["memory"][False]
    mark = ("  <- this config", "") if plan["activation_checkpointing"] else ("", "  <- this config")
    lines = [f"Memory per GPU, GiB ({plan['dtype']}, micro-batch {plan['micro_batch_size']} x "
             f"{plan['block_size']:,}; eager, excludes CUDA context and allocator slack)",
             f"  {'':34}{'ckpt on':>9} {'ckpt off':>9}"]
    labels = [k for k in dict.fromkeys([*on["items"], *off["items"]]) if k != "logits + loss"]
    labels.append("logits + loss")
    for label in labels:
        a, b = on["items"].get(label), off["items"].get(label)
        lines.append(f"  {label + ':':34}{_gib(a) if a is not None else '        -'} "
                     f"{_gib(b) if b is not None else '        -'}")
    lines.append(f"  {'total:':34}{_gib(on['total'])} {_gib(off['total'])}")
    for key, total in ((True, on["total"]), (False, off["total"])):
        over = [card for limit, card in MEMORY_LIMITS if total > limit * GiB]
        fits = f"exceeds {', '.join(over)}" if over else "fits a 40 GiB GPU"
        lines.append(f"  {'ckpt ' + ('on' if key else 'off') + ':':34}{fits}{mark[0 if key else 1]}")
    return lines


def format_plan(plan: dict) -> str:
    """Aligned `label: value` lines, grouped, under 40 lines."""
    def row(label, value):
        return f"  {label + ':':22}{value}"

    gpus = plan["world_size"]
    epochs = (f"{plan['epochs']:.3f} of {plan['train_tokens']:,} train tokens"
              if plan["epochs"] is not None else "unknown (data not prepared)")
    precision = ("float32" if plan["dtype"] == "float32"
                 else f"{plan['dtype']} autocast, fp32 master weights")
    lines = [
        "Run",
        row("name", plan["run_name"]),
        row("GPUs", f"{gpus}"),
        row("precision", precision),
        "Model",
        row("preset", f"{plan['model']}: {plan['n_layer']} layers x {plan['n_embd']:,} wide, "
                      f"{plan['n_head']} heads, MLP {plan['mlp_dim']:,}, context {plan['block_size']:,}"),
        row("vocab", f"{plan['vocab_size']:,} (embedding padded to {plan['padded_vocab']:,} rows)"),
        row("parameters", f"{plan['params']:,} (tied head counted once)"),
        row("non-embedding", f"{plan['params_non_embedding']:,}"),
        "Batch",
        row("global batch", f"{plan['global_batch_size']:,} sequences = {plan['micro_batch_size']} micro "
                            f"x {gpus} GPUs x {plan['accumulation']} accumulation"),
        row("tokens / step", f"{plan['tokens_per_step']:,}"),
        row("steps", f"{plan['max_steps']:,}"),
        row("total tokens", f"{plan['total_tokens']:,} ({plan['total_tokens'] / 1e9:,.1f}B)"),
        row("epochs", epochs),
        "Compute",
        row("FLOPs / token", f"{plan['flops_per_token']:,} (6N + attention)"),
        row("FLOPs / step", f"{plan['flops_per_step']:.4g}"),
        row("total FLOPs", f"{plan['total_flops']:.4g}"),
        *_memory_lines(plan),
        f"Wall time at {plan['mfu']:.0%} MFU (total FLOPs / (peak x MFU x {gpus} GPUs))",
    ]
    for name, w in plan["wall_time"].items():
        label = f"{gpus} x {name} ({w['peak'] / 1e12:.0f} TFLOP/s)"
        sec = w["seconds"]
        span = (f"{sec / 3600:,.1f} h = {sec / 86400:,.2f} days" if sec >= 3600
                else f"{sec / 60:.1f} min" if sec >= 60 else f"{sec:.1f} s")
        lines.append(f"  {label + ':':34}{span}, "
                     f"{w['steps_per_s']:.3g} steps/s, {w['tokens_per_s']:,.0f} tokens/s")
    return "\n".join(lines)
