"""The --dry_run planner: what a run will cost before it starts.

make_plan() does arithmetic only; the model is built on the meta device (no memory)
so the 1.2B plan takes well under a second. Every figure is per the run's config:
batch split, FLOPs, an itemized per-GPU memory estimate and the wall time at an
assumed MFU on A100 and H100.
"""
import dataclasses

import torch

from devices import PEAK_FLOPS
from model import GPT, count_params, flops_per_token
from train_config import TrainConfig

GiB = 1024 ** 3
# A way "fits" a card when its estimate leaves this much for what the estimate leaves out:
# the CUDA context and the caching allocator's slack (an allowance, not a measurement).
RESERVE_GIB = 2

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


@dataclasses.dataclass(frozen=True)
class Way:
    """One way to run a config: how the model is spread, and what trades compute for memory."""
    parallelism: str  # "ddp" | "fsdp"
    checkpointing: bool = False
    offload: bool = False

    @property
    def name(self) -> str:
        return " + ".join([self.parallelism.upper()] + ["activation checkpointing"] * self.checkpointing
                          + ["offload"] * self.offload)

    @property
    def flags(self) -> str:
        return (f"--parallelism={self.parallelism} --activation_checkpointing={self.checkpointing}"
                + (" --offload=True" if self.offload else ""))


# Fastest first: FSDP's extra traffic mostly overlaps compute; checkpointing recomputes every
# block's forward (~+33% compute); offload moves every parameter and gradient over PCIe.
WAYS = (Way("ddp"), Way("fsdp"), Way("ddp", True), Way("fsdp", True), Way("fsdp", False, True),
        Way("fsdp", True, True))


def memory_estimate(mc, n_stored: int, n_matrix: int, micro_batch: int, dtype: str, world_size: int,
                    way: Way, accumulation: int = 1, compiled: bool = False) -> dict:
    """Itemized per-GPU bytes at the peak: the larger of two moments. The end of forward
    holds every activation and the logits; the end of backward every gradient and the last
    block's activations. Gradients are freed between steps (zero_grad(set_to_none=True)), so
    the end of forward holds them only between micro-steps. n_stored counts every stored
    parameter element (padding rows included); n_matrix the elements of 2-D weights, which
    16-bit compute casts. compiled: under torch.compile (only the unchunked loss differs).
    "moment" says which one binds."""
    half = dtype in ("bfloat16", "float16")
    act = 2 if half else 4
    s, b, h = mc.block_size, micro_batch, mc.n_embd
    root = mc.padded_vocab * h + mc.block_size * h + 2 * h  # wte, wpe, ln_f: FSDP's root unit
    block = (n_stored - root) // mc.n_layer
    block_matrix = (n_matrix - mc.padded_vocab * h - mc.block_size * h) // mc.n_layer
    if way.parallelism == "ddp":
        # gradient_as_bucket_view: DDP's buckets are the gradients, no second copy
        state = {"weights (fp32)": 4 * n_stored, "AdamW state (fp32 m, v)": 8 * n_stored}
        grads = {"gradients (fp32)": 4 * n_stored}
        between_micro_steps = grads
        if half:
            # autocast's 16-bit weight copies live while backward needs them: all of them
            # without checkpointing; with it, the tied head's plus one recomputed block's.
            # (wpe is 2-D but only indexed, never cast.)
            copies = (n_matrix - mc.block_size * h if not way.checkpointing
                      else mc.padded_vocab * h + block_matrix)
            state["16-bit weight copies (autocast)"] = 2 * copies
    else:
        shard = -(-n_stored // world_size)
        state, grads = {}, {}
        if not way.offload:  # with offload these live in pinned CPU memory
            state = {"weights (fp32 shards)": 4 * shard, "AdamW state (fp32 shards)": 8 * shard}
            grads = {"gradients (fp32 shards)": 4 * shard}
        # no reduce-scatter before the last micro-step: full gradients wait
        between_micro_steps = {"gradients (unsharded, between micro-steps)": 4 * n_stored}
        # the root's parameters stay gathered from forward to backward; blocks are gathered
        # one at a time, the next prefetched, each with its gradients' reduce-scatter buffer
        state["gathered parameters (root + 2 blocks)"] = act * (root + 2 * block) + 4 * block
    held = between_micro_steps if accumulation > 1 else {}
    forward = {**state, **held, **_activation_items(mc, b, s, act, way.checkpointing),
               "logits + loss": _logit_bytes(mc, s * b, act, 4 if way.parallelism == "ddp" or not half else 2,
                                             compiled)}
    # the first block's activations are freed last (recomputed first under checkpointing)
    backward = {**state, **held, **grads, "activations (first block)": block_activation_bytes(mc, b, s, act)}
    moment, items = max(("end of forward", forward), ("end of backward", backward), key=lambda m: sum(m[1].values()))
    return {"items": items, "total": sum(items.values()), "moment": moment}


def _activation_items(mc, b: int, s: int, act: int, checkpointing: bool) -> dict:
    h = mc.n_embd
    one_block = block_activation_bytes(mc, b, s, act)
    # Around the stack: embedding dropout mask, ln_f input (fp32) + stats, head input.
    edges = (s * b * h if mc.dropout > 0 else 0) + 4 * s * b * h + 8 * s * b + act * s * b * h
    if checkpointing:
        # Each block keeps only its fp32 input; backward recomputes one block at a time.
        # Summed with the logits this is an upper bound: they are freed before recompute.
        return {"activations (block inputs)": mc.n_layer * 4 * s * b * h + edges,
                "activations (1 block recomputed)": one_block}
    return {"activations (all blocks)": mc.n_layer * one_block + edges}


def _logit_bytes(mc, positions: int, act: int, weight_bytes: int, compiled: bool) -> int:
    """The tied head and the loss. All at once, eager: the 16-bit (padded) logits, the fp32
    log-softmax saved for the loss, and in its backward the fp32 gradients of its output and
    input. All at once, compiled: the compiler fuses the cross-entropy, keeping the logits in
    the compute dtype and one fp32 copy (the only fit so far: 6.06 bytes per logit for
    gpt2-124m at 32 x 1,024 in bf16 on an H200, docs/benchmarks.md). In chunks
    (model.cross_entropy_chunk): one chunk's working set, counted as its padded logits in the
    compute dtype, their fp32 copy, the temporary of the same size logsumexp makes, and the
    padded gradient in the compute dtype (not all alive at once; the excess stands for
    backward's scaled copies of the kept gradients; eager on an H200 this came to 0.91-1.01
    of the measured peaks, docs/benchmarks.md); plus what the loss keeps for backward: the
    hidden states' gradient (fp32) and the head weight's (an fp32 sum, then the weight's
    dtype)."""
    V, Vp, h = mc.vocab_size, mc.padded_vocab, mc.n_embd
    if 0 < mc.loss_chunk < positions:
        per_position = act * Vp + 8 * V + act * Vp
        return mc.loss_chunk * per_position + 4 * positions * h + (4 + weight_bytes) * Vp * h
    if compiled:
        return positions * Vp * (act + 4)
    return positions * ((act * Vp + 12 * V) if act == 2 else 12 * V)


CHECKPOINT_BYTES_PER_PARAM = 12  # fp32 weights + AdamW m and v


def checkpoint_bytes(mc) -> int:
    """About the size of one checkpoint of the model mc (its optimizer state included)."""
    return CHECKPOINT_BYTES_PER_PARAM * _param_counts(mc)[0]


def _param_counts(mc) -> tuple[int, int]:
    """(stored parameter elements, of which in 2-D weights), from the model on the meta device."""
    with torch.device("meta"):
        model = GPT(mc)
    n_stored = sum(p.numel() for p in model.parameters())  # the tied matrix once
    n_matrix = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    if n_stored - (mc.padded_vocab - mc.vocab_size) * mc.n_embd != count_params(mc):
        raise RuntimeError(f"model has {n_stored:,} parameters but count_params says {count_params(mc):,}")
    return n_stored, n_matrix


def estimate(cfg: TrainConfig, world_size: int, mc, way: Way) -> dict:
    """memory_estimate for a config and its model config, run one way on world_size GPUs."""
    mc = dataclasses.replace(mc, activation_checkpointing=way.checkpointing)
    run = _for_gpus(cfg)
    return memory_estimate(mc, *_param_counts(mc), cfg.micro_batch_size, run.dtype, world_size, way,
                           cfg.accumulation(world_size), run.compile)


def _for_gpus(cfg: TrainConfig) -> TrainConfig:
    """The config resolved as a run on a GPU resolves it (a plan is for GPUs), unless it
    names the CPU."""
    return cfg.resolved("cpu" if cfg.device == "cpu" else "cuda")


def auto_way(cfg: TrainConfig, world_size: int, mc, card_bytes: float) -> tuple[Way, str]:
    """What --parallelism=auto runs, and why: DDP when the planner says it fits the card,
    FSDP otherwise (with the config's checkpointing and offload either way)."""
    if cfg.parallelism != "auto" or cfg.offload:
        way = Way("fsdp" if cfg.offload else cfg.parallelism, cfg.activation_checkpointing, cfg.offload)
        return way, "as configured"
    ddp, fsdp = (Way(p, cfg.activation_checkpointing) for p in ("ddp", "fsdp"))
    need = estimate(cfg, world_size, mc, ddp)["total"]
    fits = need + RESERVE_GIB * GiB <= card_bytes
    if fits or world_size == 1:
        why = "fits" if fits else "does not fit, and FSDP over one process saves nothing"
        return ddp, f"the planner puts {ddp.name} at {need / GiB:.1f} GiB per GPU: {why} in {card_bytes / GiB:.0f} GiB"
    return fsdp, (f"the planner puts {ddp.name} at {need / GiB:.1f} GiB per GPU, over {card_bytes / GiB:.0f} GiB; "
                  f"{fsdp.name} needs {estimate(cfg, world_size, mc, fsdp)['total'] / GiB:.1f} GiB")


def way_costs(way: Way, n_stored: int, world_size: int, accumulation: int, half: bool) -> str:
    """Extra compute or traffic per step, beyond DDP's all-reduce of the fp32 gradients."""
    gb, p_bytes = 1e9, 2 if half else 4
    parts = []
    if way.parallelism == "fsdp" and world_size == 1:
        parts.append("none on one process (FSDP's gathers are local copies)")
    elif way.parallelism == "fsdp":
        parts = [f"all-gather {2 * accumulation * p_bytes * n_stored / gb:.2f} GB of parameters and "
                 f"reduce-scatter {4 * n_stored / gb:.2f} GB of gradients per step, mostly overlapped"]
    if way.checkpointing:
        parts.append("+1 forward of every block (~+33% compute)")
    if way.offload:
        shard = 4 * n_stored / world_size / gb
        parts.append(f"PCIe: {2 * accumulation * shard:.2f} GB of parameters in and {shard:.2f} GB of "
                     f"gradients out per step, AdamW on the CPU ({16 * n_stored / world_size / 2**30:.1f} GiB "
                     f"of pinned CPU memory)")
    return "; ".join(parts) or "none"


def make_plan(cfg: TrainConfig, world_size: int, vocab_size: int, train_tokens: int | None) -> dict:
    """Everything --dry_run prints, as plain numbers (format_plan renders it)."""
    cfg = _for_gpus(cfg)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 < cfg.plan_mfu <= 1:
        raise ValueError(f"plan_mfu is a fraction of peak in (0, 1], got {cfg.plan_mfu}")
    mc = cfg.model_config(vocab_size)
    n_stored, _ = _param_counts(mc)
    accumulation = cfg.accumulation(world_size)
    tokens_per_step = cfg.global_batch_size * mc.block_size
    total_tokens = tokens_per_step * cfg.max_steps
    fpt = flops_per_token(mc)
    total_flops = fpt * total_tokens
    dtype = cfg.dtype

    cards = [gib * GiB for gib in cfg.plan_gpu_memory_gib]
    ways = []
    for way in WAYS:
        memory = estimate(cfg, world_size, mc, way)
        ways.append(dict(way=way, memory=memory, fits=[memory["total"] + RESERVE_GIB * GiB <= c for c in cards],
                         costs=way_costs(way, n_stored, world_size, accumulation, dtype != "float32")))
    fastest = [next((w["way"] for w in ways if w["fits"][i]), None) for i in range(len(cards))]
    this_way, why = auto_way(cfg, world_size, mc, cards[0])

    wall = {}
    for name in ("A100", "H100 SXM"):
        seconds = total_flops / (PEAK_FLOPS[name] * cfg.plan_mfu * world_size)
        wall[name] = {"peak": PEAK_FLOPS[name], "seconds": seconds,
                      "steps_per_s": cfg.max_steps / seconds, "tokens_per_s": total_tokens / seconds}

    return {
        "run_name": cfg.run_name, "world_size": world_size, "dtype": dtype,
        "model": cfg.model, "n_layer": mc.n_layer, "n_head": mc.n_head, "n_embd": mc.n_embd,
        "mlp_dim": mc.mlp_dim, "block_size": mc.block_size, "vocab_size": mc.vocab_size,
        "padded_vocab": mc.padded_vocab, "dropout": mc.dropout, "loss_chunk": mc.loss_chunk, "compile": cfg.compile,
        "params": count_params(mc), "params_non_embedding": count_params(mc, non_embedding=True),
        "global_batch_size": cfg.global_batch_size, "micro_batch_size": cfg.micro_batch_size,
        "accumulation": accumulation, "tokens_per_step": tokens_per_step,
        "max_steps": cfg.max_steps, "total_tokens": total_tokens, "train_tokens": train_tokens,
        "epochs": total_tokens / train_tokens if train_tokens else None,
        "flops_per_token": fpt, "flops_per_step": fpt * tokens_per_step, "total_flops": total_flops,
        "cards_gib": list(cfg.plan_gpu_memory_gib), "ways": ways, "fastest": fastest,
        "this_way": this_way, "this_way_why": why,
        "memory": next(w["memory"] for w in ways if w["way"] == this_way),
        "checkpoint_bytes": CHECKPOINT_BYTES_PER_PARAM * n_stored, "n_stored": n_stored,
        "mfu": cfg.plan_mfu, "wall_time": wall,
    }


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:9.2f}"


def _memory_lines(plan: dict) -> list[str]:
    cards = plan["cards_gib"]
    chunk = (f"loss in chunks of {plan['loss_chunk']:,} positions" if plan["loss_chunk"]
             else "all logits at once")
    lines = [f"Memory per GPU for each way to run it, GiB ({plan['dtype']}, micro-batch "
             f"{plan['micro_batch_size']} x {plan['block_size']:,}, {plan['world_size']} GPUs x "
             f"{plan['accumulation']} accumulation, {chunk}; {'compiled' if plan['compile'] else 'eager'}; excludes the CUDA context and "
             f"allocator slack)",
             f"  {'way':44}{'total':>8}" + "".join(f"{f'{c:g} GiB':>9}" for c in cards)]
    for w in plan["ways"]:
        marks = "".join(f"{('fits*' if plan['fastest'][i] == w['way'] else 'fits') if ok else 'over':>9}"
                        for i, ok in enumerate(w["fits"]))
        lines.append(f"  {w['way'].name:44}{w['memory']['total'] / GiB:8.2f}{marks}")
    lines.append(f"  fits: the estimate plus {RESERVE_GIB} GiB for the CUDA context and allocator slack")
    for card, way in zip(cards, plan["fastest"]):
        lines.append(f"  * fastest that fits {card:g} GiB: " + (way.flags if way else
                     "none; lower micro_batch_size (the global batch stays: accumulation grows)"))
    ddp_traffic = (f"DDP all-reduces {4 * plan['n_stored'] / 1e9:.2f} GB of gradients per step"
                   if plan["world_size"] > 1 else "one process: no traffic")
    lines.append(f"  Costs beyond DDP, per step ({ddp_traffic}):")
    lines += [f"    {w['way'].name}: {w['costs']}" for w in plan["ways"] if w["way"] != Way("ddp")]
    lines.append(f"  This config runs {plan['this_way'].name} ({plan['this_way_why']}); "
                 f"its peak, at the {plan['memory']['moment']}:")
    for label, value in plan["memory"]["items"].items():
        lines.append(f"    {label + ':':46}{_gib(value)}")
    lines.append(f"    {'total:':46}{_gib(plan['memory']['total'])}")
    size = plan["checkpoint_bytes"]
    lines.append(f"  Checkpoint: {size / 1e9:.2f} GB per save (fp32 weights + AdamW m, v); writing it takes "
                 f"{size / 1e9:.0f} s at 1 GB/s, {size / 2e8:.0f} s at 200 MB/s")
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
