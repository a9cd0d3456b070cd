"""The memory model: what one GPU holds at a training step's peak, item by item, for each
way to run a config (DDP or FSDP; no, selective or full activation checkpointing; offload;
and what --fp8 changes).
The resolver (resolve.py) uses it to pick --parallelism=auto, and the planner (plan.py)
to print every way; its terms were checked against measured peaks (docs/benchmarks.md,
bench/bench_memory.py)."""

import dataclasses

import torch

from model import GPT, checkpointing_value, count_params, float8_layers
from training.optimizers import muon_names

GiB = 1024**3
# A way "fits" a card when its estimate leaves this much for what the estimate leaves out:
# the CUDA context and the caching allocator's slack (an allowance, not a measurement).
RESERVE_GIB = 2


def norm_stat_bytes(model_cfg) -> int:
    """Bytes per position a norm keeps besides its input: LayerNorm's fp32 mean and rstd,
    RMSNorm's fp32 rstd (torch's fused kernel on CUDA, torch >= 2.8; the CPU's composite
    RMSNorm keeps its normalized output too, which tests/test_memory.py adds)."""
    return 8 if model_cfg.norm == "layernorm" else 4


def qkv_width(model_cfg) -> int:
    """Columns of the fused q, k, v projection: grouped-query attention's k and v are
    n_kv_head heads wide."""
    return (model_cfg.n_head + 2 * model_cfg.kv_heads) * model_cfg.head_dim


def block_activation_bytes(model_cfg, batch: int, seq: int, act_bytes: int) -> int:
    """Bytes one transformer block saves for backward on one micro-batch, eager PyTorch.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models", eq. 1) itemize s*b*h*(34 + 5*a*s/h) bytes for 16-bit activations. Adapted
    to this model (checked against saved_tensors_hooks in tests/test_memory.py):
    - no 5*a*s/h term: flash/efficient SDPA keep q, k, v, the output and a logsumexp, never
      the T x T scores; attention-prob dropout is replayed from an RNG seed, no mask;
    - the two norm inputs are the residual stream, which stays fp32 under autocast
      with fp32 params: 4 B each, not 2 (+4 sbh);
    - q, k, v are one matmul's output, k and v n_kv_head heads wide (grouped-query attention
      keeps them unrepeated); rotary embeddings add the rotated q and k (the kernel's inputs)
      and the cos/sin tables cast to the compute dtype;
    - the MLP terms scale with mlp_dim, not a fixed 4h: GELU keeps its input and output;
      SwiGLU its [gate; up] output (2x), silu(gate) and the product (c_proj's input);
    - the two residual dropout masks (1 B bool each) exist only when dropout > 0.
    """
    s, b, f = seq, batch, model_cfg.mlp_dim
    sb, sbh = s * b, s * b * model_cfg.n_embd
    q, kv = model_cfg.n_head * model_cfg.head_dim, model_cfg.kv_heads * model_cfg.head_dim
    resid = 4  # fp32 residual stream (autocast leaves it fp32; fp32 runs are fp32 anyway)
    total = 2 * resid * sbh + 2 * norm_stat_bytes(model_cfg) * sb  # ln_1, ln_2 inputs + stats
    total += act_bytes * sbh  # c_attn input (ln_1 output)
    total += act_bytes * sb * qkv_width(model_cfg) + 4 * model_cfg.n_head * sb  # q, k, v + fp32 logsumexp
    if model_cfg.rope_theta:
        total += act_bytes * (sb * (q + kv) + 2 * s * model_cfg.head_dim)  # rotated q, k; cos, sin
    total += act_bytes * sb * q  # attention output = attn.c_proj input
    total += act_bytes * sbh  # mlp.c_fc input (ln_2 output)
    total += (4 if model_cfg.mlp == "swiglu" else 2) * act_bytes * sb * f
    if model_cfg.dropout > 0:
        total += 2 * sbh  # bool masks after attn.c_proj and mlp.c_proj
    return total


def selective_block_bytes(model_cfg, batch: int, seq: int, act_bytes: int) -> int:
    """Bytes selective checkpointing keeps per block besides its input (model.SELECTIVE_SAVE_OPS):
    the four matmuls' outputs (q, k, v together; attention's projection; the MLP's two,
    SwiGLU's first one [gate; up]) and the attention kernel's output and fp32 logsumexp, all
    in the compute dtype. No autocast weight copy is kept: the casts are recomputed, as are
    the rotary embeddings. (Checked against the storages a forward leaves alive in
    tests/test_memory.py.)"""
    sb = seq * batch
    q = model_cfg.n_head * model_cfg.head_dim
    up = 2 if model_cfg.mlp == "swiglu" else 1
    matmuls = qkv_width(model_cfg) + q + 2 * model_cfg.n_embd + up * model_cfg.mlp_dim
    return act_bytes * sb * matmuls + 4 * model_cfg.n_head * sb


def root_parameters(model_cfg) -> dict:
    """The parameters outside the blocks (FSDP's root unit), by what autocast does with each:
    {"head": the output matrix, cast to 16 bits for the head's matmul (wte when tied);
    "lookups": matrices only indexed, never cast (wpe; wte when untied); "norm": ln_f's}."""
    h = model_cfg.n_embd
    head = model_cfg.padded_vocab * h
    lookups = (0 if model_cfg.rope_theta else model_cfg.block_size * h) + (
        0 if model_cfg.tie_embeddings else head
    )
    norm = 2 * h if model_cfg.norm == "layernorm" and model_cfg.bias else h
    return {"head": head, "lookups": lookups, "norm": norm}


# What a way calls each kind of recomputation (the planner's table and its costs).
CHECKPOINTING_NAMES = {"full": "activation checkpointing", "selective": "selective checkpointing"}


@dataclasses.dataclass(frozen=True)
class Way:
    """One way to run a config: how the model is spread, and what trades compute for memory.
    checkpointing: one of model.ACTIVATION_CHECKPOINTING (True is taken as "full")."""

    parallelism: str  # "ddp" | "fsdp"
    checkpointing: bool | str = False
    offload: bool = False

    def __post_init__(self):
        object.__setattr__(self, "checkpointing", checkpointing_value(self.checkpointing))

    @property
    def parts(self) -> list[str]:
        """What this way is made of, as the planner names each: FSDP, a checkpointing, offload."""
        recompute = [CHECKPOINTING_NAMES[self.checkpointing]] if self.checkpointing else []
        return ["FSDP"] * (self.parallelism == "fsdp") + recompute + ["offload"] * self.offload

    @property
    def name(self) -> str:
        return " + ".join(["DDP"] * (self.parallelism == "ddp") + self.parts)

    @property
    def flags(self) -> str:
        return f"--parallelism={self.parallelism} --activation_checkpointing={self.checkpointing}" + (
            " --offload=True" if self.offload else ""
        )


# Fastest first: FSDP's extra traffic mostly overlaps compute; selective checkpointing
# recomputes only elementwise ops; full checkpointing recomputes every block's forward
# (~+33% compute); offload moves every parameter and gradient over PCIe.
WAYS = (
    Way("ddp"),
    Way("fsdp"),
    Way("ddp", "selective"),
    Way("fsdp", "selective"),
    Way("ddp", "full"),
    Way("fsdp", "full"),
    Way("fsdp", False, True),
    Way("fsdp", "selective", True),
    Way("fsdp", "full", True),
)


def _fsdp_state(n_stored, n_muon, world_size, way, act, root, block) -> tuple[dict, dict, dict]:
    """FSDP's per-GPU state, gradients, and the gradients held between micro-steps."""
    shard = -(-n_stored // world_size)
    state, grads = {}, {}
    if not way.offload:  # with offload these live in pinned CPU memory
        state = {
            "weights (fp32 shards)": 4 * shard,
            **_optimizer_state(shard, -(-n_muon // world_size), " shards"),
        }
        grads = {"gradients (fp32 shards)": 4 * shard}
    # no reduce-scatter before the last micro-step: full gradients wait
    between_micro_steps = {"gradients (unsharded, between micro-steps)": 4 * n_stored}
    # the root's parameters stay gathered from forward to backward; blocks are gathered
    # one at a time, the next prefetched, each with its gradients' reduce-scatter buffer
    state["gathered parameters (root + 2 blocks)"] = act * (root + 2 * block) + 4 * block
    return state, grads, between_micro_steps


def memory_estimate(
    model_cfg,
    n_stored: int,
    n_matrix: int,
    micro_batch: int,
    dtype: str,
    world_size: int,
    way: Way,
    accumulation: int = 1,
    compiled: bool = False,
    n_fp8: int = 0,
    n_muon: int = 0,
) -> dict:
    """Itemized per-GPU bytes at the peak: the larger of two moments. The end of forward
    holds every activation and the logits; the end of backward every gradient and the last
    block's activations. Gradients are freed between steps (zero_grad(set_to_none=True)), so
    the end of forward holds them only between micro-steps. n_stored counts every stored
    parameter element (padding rows included); n_matrix the elements of 2-D weights, which
    16-bit compute casts; n_fp8 those of the weights in float8 layers (--fp8), which are
    cast from fp32 to float8 when used and keep no 16-bit copy (torchao saves the fp32
    weight itself for backward); n_muon those Muon trains (--optimizer=muon), whose state
    is one fp32 momentum buffer, not AdamW's two (Muon's Newton-Schulz temporaries live only
    in the optimizer step, after backward has freed the activations: not counted).
    compiled: under torch.compile (only the unchunked loss differs). "moment" says which one binds."""
    half = dtype in ("bfloat16", "float16")
    act = 2 if half else 4
    s, b = model_cfg.block_size, micro_batch
    parts = root_parameters(model_cfg)
    root = sum(parts.values())  # wte, wpe or lm_head, ln_f: FSDP's root unit
    block = (n_stored - root) // model_cfg.n_layer
    block_matrix = (n_matrix - parts["head"] - parts["lookups"]) // model_cfg.n_layer
    if way.parallelism == "ddp":
        # gradient_as_bucket_view: DDP's buckets are the gradients, no second copy
        state = {"weights (fp32)": 4 * n_stored, **_optimizer_state(n_stored, n_muon)}
        grads = {"gradients (fp32)": 4 * n_stored}
        between_micro_steps = grads
        if half:
            # autocast's 16-bit weight copies live while backward needs them: all of them
            # without checkpointing; with it (full or selective: the casts are recomputed),
            # the head's plus one recomputed block's. (wpe, and wte when the head is untied,
            # are 2-D but only indexed, never cast.) Float8 layers keep none.
            block_fp8 = n_fp8 // model_cfg.n_layer
            copies = (
                n_matrix - parts["lookups"] - n_fp8
                if not way.checkpointing
                else parts["head"] + block_matrix - block_fp8
            )
            state["16-bit weight copies (autocast)"] = 2 * copies
    else:
        state, grads, between_micro_steps = _fsdp_state(n_stored, n_muon, world_size, way, act, root, block)
    held = between_micro_steps if accumulation > 1 else {}
    forward = {
        **state,
        **held,
        **_activation_items(model_cfg, b, s, act, way.checkpointing),
        "logits + loss": _logit_bytes(
            model_cfg, s * b, act, 4 if way.parallelism == "ddp" or not half else 2, compiled
        ),
    }
    # the first block's activations are freed last (recomputed first under checkpointing)
    backward = {
        **state,
        **held,
        **grads,
        "activations (first block)": block_activation_bytes(model_cfg, b, s, act),
    }
    moment, items = max(
        ("end of forward", forward), ("end of backward", backward), key=lambda m: sum(m[1].values())
    )
    return {"items": items, "total": sum(items.values()), "moment": moment}


def _optimizer_state(n: int, n_muon: int, shards: str = "") -> dict:
    """The optimizer state of n parameter elements, n_muon of them Muon's: {label: bytes}."""
    if not n_muon:
        return {f"AdamW state (fp32{shards or ' m, v'})": 8 * n}
    return {f"AdamW + Muon state (fp32{shards})": 8 * (n - n_muon) + 4 * n_muon}


def _activation_items(model_cfg, b: int, s: int, act: int, checkpointing: bool | str) -> dict:
    h = model_cfg.n_embd
    one_block = block_activation_bytes(model_cfg, b, s, act)
    # Around the stack: embedding dropout mask, ln_f input (fp32) + stats, head input.
    edges = (s * b * h if model_cfg.dropout > 0 else 0) + 4 * s * b * h + norm_stat_bytes(model_cfg) * s * b
    edges += act * s * b * h
    if not checkpointing:
        return {"activations (all blocks)": model_cfg.n_layer * one_block + edges}
    # Each block keeps its fp32 input (and, selective, its matmuls' outputs); backward
    # recomputes one block at a time. Summed with the logits this is an upper bound: they
    # are freed before recompute.
    items = {"activations (block inputs)": model_cfg.n_layer * 4 * s * b * h + edges}
    if checkpointing == "selective":
        items["activations (matmul outputs kept)"] = model_cfg.n_layer * selective_block_bytes(
            model_cfg, b, s, act
        )
    items["activations (1 block recomputed)"] = one_block
    return items


def _logit_bytes(model_cfg, positions: int, act: int, weight_bytes: int, compiled: bool) -> int:
    """The head (tied or not) and the loss. All at once, eager: the 16-bit (padded) logits, the fp32
    log-softmax saved for the loss, and in its backward the fp32 gradients of its output and
    input. All at once, compiled: the compiler fuses the cross-entropy, keeping the logits in
    the compute dtype and one fp32 copy (fitted to one measured run: docs/benchmarks.md,
    "Throughput and memory"). In chunks
    (model.cross_entropy_chunk): one chunk's working set, counted as its padded logits in the
    compute dtype, their fp32 copy, the temporary of the same size logsumexp makes, and the
    padded gradient in the compute dtype (not all alive at once; the excess stands for
    backward's scaled copies of the kept gradients, as measured peaks bear out:
    docs/benchmarks.md); plus what the loss keeps for backward: the hidden states' gradient
    (fp32) and the head weight's (fp32, which backward scales, then casts to the weight's
    dtype)."""
    V, Vp, h = model_cfg.vocab_size, model_cfg.padded_vocab, model_cfg.n_embd
    if 0 < model_cfg.loss_chunk < positions:
        per_position = act * Vp + 8 * V + act * Vp
        return model_cfg.loss_chunk * per_position + 4 * positions * h + (4 + weight_bytes) * Vp * h
    if compiled:
        return positions * Vp * (act + 4)
    return positions * ((act * Vp + 12 * V) if act == 2 else 12 * V)


def param_counts(model_cfg) -> tuple[int, int]:
    """(stored parameter elements, of which in 2-D weights), from the model on the meta device;
    checked against count_params, the closed form (an untied head's padding rows included)."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    n_stored = sum(p.numel() for p in model.parameters())  # the tied matrix once
    n_matrix = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    heads = 1 if model_cfg.tie_embeddings else 2
    padding = heads * (model_cfg.padded_vocab - model_cfg.vocab_size) * model_cfg.n_embd
    if n_stored - padding != count_params(model_cfg):
        raise RuntimeError(
            f"model has {n_stored:,} parameters but count_params says {count_params(model_cfg):,}"
        )
    return n_stored, n_matrix


def muon_param_count(model_cfg) -> int:
    """Elements of the parameters --optimizer=muon trains with Muon (optimizers.is_hidden_matrix)."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    named = dict(model.named_parameters())
    return sum(named[n].numel() for n in muon_names(model))


def fp8_weight_count(model_cfg) -> int:
    """Elements of the weights model.float8_layers converts (from the model on the meta device)."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    return sum(model.get_submodule(name).weight.numel() for name in float8_layers(model))


def estimate(cfg, world_size: int, model_cfg, way: Way) -> dict:
    """memory_estimate for a resolved TrainConfig (resolve.py: a concrete dtype and compile)
    and its model config, run one way on world_size GPUs."""
    model_cfg = dataclasses.replace(model_cfg, activation_checkpointing=way.checkpointing)
    return memory_estimate(
        model_cfg,
        *param_counts(model_cfg),
        cfg.micro_batch_size,
        cfg.dtype,
        world_size,
        way,
        cfg.accumulation(world_size),
        cfg.compile,
        fp8_weight_count(model_cfg) if cfg.fp8 else 0,
        muon_param_count(model_cfg) if cfg.optimizer == "muon" else 0,
    )


def checkpoint_bytes(model_cfg, optimizer: str = "adamw") -> int:
    """About the size of one checkpoint file: fp32 weights and AdamW's m and v, 12 bytes per
    stored parameter; 8 for those Muon trains (one momentum buffer)."""
    n_muon = muon_param_count(model_cfg) if optimizer == "muon" else 0
    return 12 * param_counts(model_cfg)[0] - 4 * n_muon


def fits(total_bytes: float, card_bytes: float) -> bool:
    """Whether an estimate fits a card, with RESERVE_GIB left for what it leaves out."""
    return total_bytes + RESERVE_GIB * GiB <= card_bytes
