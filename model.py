"""The decoder in one file: config, presets, model, KV cache. GPT-2 and the Llama family
(Llama 3, Qwen2) are settings of one GPTConfig, not separate classes: rotary positions
(with Llama 3's rope scaling) or a learned position table, RMSNorm or LayerNorm, a SwiGLU or
GELU MLP, grouped-query attention, optional q/k/v biases, a tied or untied head.

Read top to bottom: GPTConfig and PRESETS, rotary embeddings, the blocks and how they are
recomputed (activation checkpointing), the chunked loss and compile, float8 training
(--fp8), then GPT with its bookkeeping (parameter counts, optimizer groups, FLOPs per token).

GPT's calls, one answer each: model(idx, targets) is the mean loss (what training and
validation call, through DDP, FSDP and compile); model.next_token_logits(idx, cache) the
logits after each row (generation); model.position_losses(idx, targets) each position's loss
(scoring); model.logits(idx) every position's logits.
"""

import functools
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from errors import BadInput

# What activation_checkpointing may be: False (keep every activation), "full" (keep each
# block's input, recompute the block) or "selective" (keep the matmuls' and attention's
# outputs too, recompute only the cheap ops between them). True, as older configs and
# checkpoints say, means "full".
ACTIVATION_CHECKPOINTING = (False, "full", "selective")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
# The keys of Llama 3's rope_scaling (config.json's "rope_scaling"), besides "rope_type".
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# Positions per chunk of the head + loss where a run does not say (an eager run's training
# default, see training/config.py; always in scoring, which keeps no gradients: chunks cost
# nothing there and bound the logits' memory).
LOSS_CHUNK = 1024


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # real vocabulary; ids at or above it are padding, never predicted
    block_size: int = 1024  # context length in tokens
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width
    n_kv_head: int = 0  # key/value heads for grouped-query attention; 0 means n_head
    mlp_hidden: int = 0  # MLP inner width (SwiGLU: of gate and up each); 0 means 4 * n_embd
    dropout: float = 0.0  # dropout on attention probs, residual branches and embeddings (training only)
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2
    qkv_bias: bool | None = None  # biases on the q/k/v projections (Qwen2: True, with bias False); None: bias
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama, Qwen)
    norm_eps: float = 1e-5  # the norms' epsilon
    mlp: str = "gelu"  # "gelu" (GPT-2: c_proj(gelu(c_fc x))) or "swiglu" (Llama: c_proj(silu(gate) * up))
    rope_theta: float = 0.0  # 0: learned absolute positions (wpe); > 0: rotary embeddings of this base
    rope_scaling: dict | None = None  # Llama 3's {"rope_type": "llama3", "factor", ...}; None: plain RoPE
    tie_embeddings: bool = True  # the head is wte; False adds an lm_head Linear (no bias)
    gelu_approximate: str = "tanh"  # MLP GELU: "tanh" (GPT-2's form) or "none" (exact erf, as nanoGPT)
    pad_vocab_multiple: int = 64  # embedding rows padded up to this multiple for faster matmuls
    activation_checkpointing: bool | str = False  # one of ACTIVATION_CHECKPOINTING (True: "full")
    loss_chunk: int = 0  # positions per chunk of head + loss (0: training all at once, scoring LOSS_CHUNK)

    def __post_init__(self):
        self.activation_checkpointing = checkpointing_value(self.activation_checkpointing)
        if isinstance(self.rope_scaling, dict):  # its own copy: presets share theirs
            self.rope_scaling = dict(self.rope_scaling)
        if self.n_embd % self.n_head:
            raise BadInput(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"pick n_head from the divisors of n_embd"
            )
        if self.gelu_approximate not in ("tanh", "none"):
            raise BadInput(
                f"gelu_approximate must be 'tanh' (GPT-2) or 'none' (exact GELU), "
                f"got {self.gelu_approximate!r}"
            )
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise BadInput(f"{name} must be positive, got {getattr(self, name)}")
        self._check_llama_fields()

    def _check_llama_fields(self):
        if self.n_kv_head < 0 or self.n_head % self.kv_heads:
            raise BadInput(
                f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0 means n_head); "
                f"pick one of {[k for k in range(1, self.n_head + 1) if self.n_head % k == 0]}"
            )
        if self.norm not in NORMS:
            raise BadInput(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise BadInput(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.norm_eps <= 0:
            raise BadInput(f"norm_eps must be positive, got {self.norm_eps}")
        if self.rope_theta < 0:
            raise BadInput(
                f"rope_theta must be 0 (learned positions) or a positive base, got {self.rope_theta}"
            )
        if self.rope_theta > 0 and self.head_dim % 2:
            raise BadInput(
                f"rotary embeddings rotate pairs of dimensions: head_dim={self.head_dim} "
                f"(n_embd / n_head) must be even; change n_head"
            )
        if self.rope_scaling is not None:
            check_rope_scaling(self.rope_scaling, self.rope_theta)

    @property
    def mlp_dim(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def padded_vocab(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return (self.vocab_size + m - 1) // m * m


# Llama 3's rope scaling as Llama 3.1 and 3.2 publish it (config.json's "rope_scaling").
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=32.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
)
LLAMA = dict(norm="rmsnorm", mlp="swiglu", bias=False)  # what every Llama-family preset shares
LLAMA_3 = dict(LLAMA, vocab_size=128256, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE, norm_eps=1e-5)
QWEN_2_5 = dict(LLAMA, vocab_size=151936, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True)

# Named shapes. A preset without vocab_size takes the data's (the GPT-2 ones: these defaults
# are GPT-2's, so `num_params` of a preset is the number in docs/training.md's presets
# table); one with a vocab_size keeps it, the vocabulary of its published tokenizer.
PRESETS = {
    # CPU work: nanoGPT's CPU recipe shape (4 x 128, context 64).
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # A small GPT-2-tokenizer model that trains on 2 CPU cores in minutes.
    "small-cpu": dict(n_layer=4, n_head=4, n_embd=192, block_size=128),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-350m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    # GPT-2 XL's shape: the ~1B model of the 16 GB plan (1.558B with the GPT-2 vocab).
    "gpt2-1.5b": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    # The documented 300M run: 24 x 1,024, context 2,048, tied. A 4x MLP would make it
    # 356M; an MLP of 2,944 (2.875x, a multiple of 128) gives a true 299.2M.
    "300m": dict(n_layer=24, n_head=16, n_embd=1024, block_size=2048, mlp_hidden=2944),
    # The documented 1.2B run: context 1,024; 22 x 2,048 with 16 heads of 128 is 1.213B.
    "1.2b": dict(n_layer=22, n_head=16, n_embd=2048, block_size=1024),
    # Llama-shaped models for a CPU, "tiny" and "small-cpu" with Llama's parts: rotary
    # positions, RMSNorm, SwiGLU (hidden ~8/3 x width, a multiple of 64), grouped-query
    # attention, tied; the vocabulary from the data.
    "llama-tiny": dict(
        LLAMA, n_layer=4, n_head=4, n_kv_head=2, n_embd=128, mlp_hidden=384, block_size=64, rope_theta=10000.0
    ),
    "llama-small-cpu": dict(
        LLAMA,
        n_layer=4,
        n_head=6,
        n_kv_head=2,
        n_embd=192,
        mlp_hidden=512,
        block_size=128,
        rope_theta=10000.0,
    ),
    # The published configs (config.json on the Hugging Face hub). Context: 4,096 tokens to
    # train on, the length both families pretrained at before their long-context stages
    # (Llama 3: 8,192; Qwen2.5: 4,096); rotary positions take any length (--block_size).
    "llama-3.2-1b": dict(
        LLAMA_3, n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, mlp_hidden=8192, block_size=4096
    ),
    "llama-3.2-3b": dict(
        LLAMA_3, n_layer=28, n_head=24, n_kv_head=8, n_embd=3072, mlp_hidden=8192, block_size=4096
    ),
    "qwen2.5-0.5b": dict(
        QWEN_2_5, n_layer=24, n_head=14, n_kv_head=2, n_embd=896, mlp_hidden=4864, block_size=4096
    ),
    "qwen2.5-1.5b": dict(
        QWEN_2_5, n_layer=28, n_head=12, n_kv_head=2, n_embd=1536, mlp_hidden=8960, block_size=4096
    ),
    "qwen2.5-3b": dict(
        QWEN_2_5, n_layer=36, n_head=16, n_kv_head=2, n_embd=2048, mlp_hidden=11008, block_size=4096
    ),
}


def check_rope_scaling(scaling, rope_theta: float):
    """A BadInput naming the fix unless scaling is Llama 3's rope scaling, complete."""
    if not isinstance(scaling, dict) or scaling.get("rope_type") != "llama3":
        raise BadInput(
            f'rope_scaling must be None or Llama 3\'s {{"rope_type": "llama3", ...}}, got {scaling!r}'
        )
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in scaling]
    extra = sorted(set(scaling) - {"rope_type", *LLAMA3_ROPE_KEYS})
    if missing or extra:
        raise BadInput(
            f"rope_scaling (llama3) needs exactly {', '.join(LLAMA3_ROPE_KEYS)}: "
            f"missing {missing}, unknown {extra}"
        )
    if rope_theta <= 0:
        raise BadInput("rope_scaling scales rotary embeddings: set rope_theta > 0 too")
    if not scaling["high_freq_factor"] > scaling["low_freq_factor"] > 0 or scaling["factor"] <= 0:
        raise BadInput(
            f"rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0, got {scaling}"
        )


def checkpointing_value(value) -> bool | str:
    """activation_checkpointing as one of ACTIVATION_CHECKPOINTING (True means "full"), or a
    ValueError naming the choices."""
    value = "full" if value is True else value
    if isinstance(value, (bool, str)) and value in ACTIVATION_CHECKPOINTING:
        return value
    raise BadInput(
        f"activation_checkpointing must be one of {', '.join(map(repr, ACTIVATION_CHECKPOINTING))} "
        f"(True means 'full'), got {value!r}"
    )


def check_preset(name: str):
    if name not in PRESETS:
        raise BadInput(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")


def preset_config(name: str, data_vocab: int | None = None, **overrides) -> GPTConfig:
    """GPTConfig for a preset, with fields replaced by the non-None overrides. data_vocab: the
    vocabulary of the data it will train on, the model's unless the preset has its own (which
    must hold it: a BadInput otherwise)."""
    check_preset(name)
    valid = {f.name for f in fields(GPTConfig)}
    bad = set(overrides) - valid
    if bad:
        raise BadInput(f"unknown model fields {sorted(bad)}; valid: {sorted(valid)}")
    model_cfg = GPTConfig(**PRESETS[name])
    own = PRESETS[name].get("vocab_size")
    if data_vocab is not None and own is None:
        model_cfg = replace(model_cfg, vocab_size=data_vocab)
    elif data_vocab is not None and data_vocab > own:
        raise BadInput(
            f"the data's vocabulary of {data_vocab:,} tokens is larger than preset {name!r}'s "
            f"{own:,}; prepare the data with the model's tokenizer (prepare_data.py --tokenizer=FOLDER)"
        )
    return replace(model_cfg, **{k: v for k, v in overrides.items() if v is not None})


# What makes two configs' weights interchangeable: equal values of these.
SHAPE_FIELDS = (
    "vocab_size",
    "padded_vocab",
    "block_size",
    "n_layer",
    "n_head",
    "kv_heads",
    "n_embd",
    "mlp_dim",
    "bias",
    "has_qkv_bias",
    "norm",
    "norm_eps",
    "mlp",
    "rope_theta",
    "rope_scaling",
    "tie_embeddings",
)
# How a model trains, not what it computes: a run sets these, whatever its weights came from.
TRAINING_FIELDS = ("dropout", "activation_checkpointing", "loss_chunk")


def shape_differences(a: GPTConfig, b: GPTConfig) -> dict:
    """{field: (a's value, b's value)} for the SHAPE_FIELDS where a and b differ."""
    return {k: (getattr(a, k), getattr(b, k)) for k in SHAPE_FIELDS if getattr(a, k) != getattr(b, k)}


class KVCache:
    """Per-layer keys and values for incremental decoding, preallocated to block_size (of the
    key/value heads: grouped-query attention caches n_kv_head of them)."""

    def __init__(self, model_cfg: GPTConfig, batch_size: int, device, dtype):
        shape = (batch_size, model_cfg.kv_heads, model_cfg.block_size, model_cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model_cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(model_cfg.n_layer)]
        self.pos = 0  # tokens already cached
        self.capacity = model_cfg.block_size

    def reset(self):
        self.pos = 0


# ---- rotary position embeddings ----------------------------------------------------------


def rope_inv_freq(model_cfg: GPTConfig, device=None) -> torch.Tensor:
    """The rotation frequencies of each pair of a head's dimensions, fp32 (head_dim / 2,), as
    transformers computes them: 1 / theta^(2i / head_dim), and with Llama 3's scaling the
    long wavelengths divided by `factor`, the short ones kept, those between interpolated."""
    hd = model_cfg.head_dim
    inv_freq = 1.0 / (
        model_cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd)
    )
    s = model_cfg.rope_scaling
    if s is None:
        return inv_freq
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(model_cfg: GPTConfig, start: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_dim), fp32, of positions start..start+T-1: each frequency twice,
    once per half of the head (the "rotate_half" layout of transformers' Llama, so weights
    from the hub need no permutation). Computed per forward, not stored: a buffer would be
    cast by .half() and left uninitialized by meta-device construction."""
    pos = torch.arange(start, start + T, device=device, dtype=torch.float32)
    freqs = pos[:, None] * rope_inv_freq(model_cfg, device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x (B, heads, T, head_dim) rotated by position: each dimension i of the first half
    paired with i + head_dim / 2."""
    half = x.size(-1) // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# ---- the blocks ----------------------------------------------------------------------------


def make_norm(model_cfg: GPTConfig) -> nn.Module:
    """The model's norm: RMSNorm (no bias) or LayerNorm (bias as the config says)."""
    if model_cfg.norm == "rmsnorm":
        return nn.RMSNorm(model_cfg.n_embd, eps=model_cfg.norm_eps)
    return nn.LayerNorm(model_cfg.n_embd, eps=model_cfg.norm_eps, bias=model_cfg.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head = model_cfg.n_head, model_cfg.kv_heads
        self.head_dim = model_cfg.head_dim
        self.dropout = model_cfg.dropout
        # q, k and v in one matmul: rows n_head * head_dim of q, then k's and v's
        qkv_rows = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(model_cfg.n_embd, qkv_rows, bias=model_cfg.has_qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, model_cfg.n_embd, bias=model_cfg.bias)
        self.resid_drop = nn.Dropout(model_cfg.dropout)

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        hd, kv = self.head_dim, self.n_kv_head
        q, k, v = self.c_attn(x).split((self.n_head * hd, kv * hd, kv * hd), dim=2)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k, v = (t.view(B, T, kv, hd).transpose(1, 2) for t in (k, v))
        if rope is not None:
            cos, sin = (t.to(q.dtype) for t in rope)  # in the compute dtype, as transformers does
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            start = cache.pos
            cache.k[layer][:B, :, start : start + T] = k
            cache.v[layer][:B, :, start : start + T] = v
            k = cache.k[layer][:B, :, : start + T]
            v = cache.v[layer][:B, :, : start + T]
            if start > 0:
                # Queries sit at positions start..start+T-1: each sees every key up to its own
                # position. SDPA's is_causal aligns top-left, which is wrong when T < keys.
                causal = False
                if T > 1:
                    qpos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = torch.arange(start + T, device=x.device)[None, :] <= qpos
        # grouped-query attention: each k/v head serves n_head / n_kv_head query heads, in the
        # kernel (no repeated copies of k and v)
        gqa = {"enable_gqa": True} if kv != self.n_head else {}
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            **gqa,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hd)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    """GELU: c_proj(gelu(c_fc x)). SwiGLU: c_fc's rows are [gate; up], c_proj(silu(gate) * up)."""

    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.swiglu = model_cfg.mlp == "swiglu"
        rows = model_cfg.mlp_dim * (2 if self.swiglu else 1)
        self.c_fc = nn.Linear(model_cfg.n_embd, rows, bias=model_cfg.bias)
        self.c_proj = nn.Linear(model_cfg.mlp_dim, model_cfg.n_embd, bias=model_cfg.bias)
        self.drop = nn.Dropout(model_cfg.dropout)
        self.gelu_approximate = model_cfg.gelu_approximate

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.drop(self.c_proj(F.silu(gate) * up))
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(model_cfg)
        self.attn = CausalSelfAttention(model_cfg)
        self.ln_2 = make_norm(model_cfg)
        self.mlp = MLP(model_cfg)

    def forward(self, x, rope=None, cache: KVCache | None = None, layer: int = 0):
        """rope: (cos, sin) of the positions (rope_tables), or None with learned positions."""
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


def _ops(*names: str) -> list:
    """The aten ops of these names that this torch has (newer kernels are missing in older ones)."""
    return [getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)]


# What selective checkpointing keeps for backward: the outputs of the matmuls and of the fused
# attention kernels (CUDA's and the CPU's), float8's scaled matmuls and their amax (a scalar,
# whose reduction over a whole tensor need not run again); as torchtitan's op-level SAC does,
# but keeping every matmul's output where it recomputes every other one.
# Everything else a block computes (layer norms, GELU, dropout, casts, residual adds) is
# recomputed in backward: elementwise work, cheap beside the matmuls it feeds.
SELECTIVE_SAVE_OPS = _ops(
    "mm",
    "addmm",
    "bmm",
    "_scaled_mm",
    "max",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
)


def checkpointed(block: nn.Module, x, how: str, rope=None):
    """block(x, rope) with its activations recomputed in backward: all of them ("full"), or all
    but the outputs of SELECTIVE_SAVE_OPS ("selective"). The RNG state is replayed, so dropout
    draws the same masks."""
    if how == "selective":
        return checkpoint(
            block,
            x,
            rope,
            use_reentrant=False,
            context_fn=functools.partial(create_selective_checkpoint_contexts, SELECTIVE_SAVE_OPS),
        )
    return checkpoint(block, x, rope, use_reentrant=False)


def cross_entropy_chunk(hidden, weight, targets, vocab_size: int, want_grads: bool):
    """One chunk of ChunkedCrossEntropy: its summed loss and, with want_grads, the gradients
    of that sum with respect to the chunk's hidden states and the head's weight. hidden and
    weight come in the compute dtype. The matmuls run over all padded_vocab rows (aligned
    shapes, as the unchunked path); the softmax over the real vocab only, so the padding
    columns' gradient is zero. The logits' gradient, softmax - onehot, lies in [-1, 1]
    whatever the batch: in fp16 it neither underflows (divided by the positions first, most
    of it would: no loss scale reaches a forward pass) nor, summed over one chunk's positions
    into the weight's gradient, comes near fp16's 65,504 for layer-normed hidden states."""
    logits = F.linear(hidden, weight)[:, :vocab_size].float()
    valid = targets != -1
    safe = targets.clamp(min=0)[:, None]
    lse = logits.logsumexp(-1)
    loss_sum = ((lse - logits.gather(1, safe)[:, 0]) * valid).sum()
    if not want_grads:
        return loss_sum, None, None
    # d(summed loss)/d logits = softmax - onehot, 0 where ignored
    p = logits.sub_(lse[:, None]).exp_()  # the softmax, in the logits' memory
    p.scatter_add_(1, safe, -torch.ones_like(safe, dtype=p.dtype))
    g = torch.zeros(hidden.size(0), weight.size(0), device=hidden.device, dtype=hidden.dtype)
    g[:, :vocab_size] = p.mul_(valid[:, None])
    return loss_sum, g @ weight, (g.t() @ hidden).float()


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the head (tied or not), `chunk` positions at a time, so that one chunk's
    logits exist at a time in forward and in backward. The forward pass computes each
    chunk's gradients with respect to the hidden states and the head's weight while its
    logits are at hand (the same matmuls backward would do, so no extra compute), and keeps
    them in fp32, divided by the count of positions; backward only scales them (by the loss
    scale, the accumulation, ...) and casts them to their inputs' dtypes. Logits are
    computed as F.linear would under the active autocast and upcast to fp32 for the softmax,
    as the unchunked path does. Targets of -1 are ignored. `step` is cross_entropy_chunk, or
    a compiled copy of it (GPT.chunk_step)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk: int, step):
        device = hidden.device.type
        # the dtype F.linear computes in: autocast's, else the inputs'
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        want_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        count = (targets != -1).sum().clamp(min=1)
        total = torch.zeros((), device=hidden.device, dtype=torch.float32)
        grad_hidden = (
            torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32) if want_grads else None
        )
        grad_weight = (
            torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if want_grads else None
        )
        w = weight.to(dtype)
        for start in range(0, hidden.size(0), chunk):
            end = start + chunk
            loss_sum, g_hidden, g_weight = step(
                hidden[start:end].to(dtype), w, targets[start:end], vocab_size, want_grads
            )
            total += loss_sum
            if want_grads:
                grad_hidden[start:end] = g_hidden
                grad_weight += g_weight
        if want_grads:
            grad_hidden /= count
            grad_weight /= count
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (
            (grad_hidden * grad_loss).to(hidden_dtype),
            (grad_weight * grad_loss).to(weight_dtype),
            None,
            None,
            None,
            None,
        )


@torch.compiler.disable
def chunked_cross_entropy(hidden, weight, targets, vocab_size: int, chunk: int, step):
    """ChunkedCrossEntropy, kept out of a compiled model's graph: the compiler would unroll
    its loop into one graph and schedule every chunk's logits at once, holding them all (a
    measured peak: docs/benchmarks.md, "Throughput and memory"). A compiled
    model compiles `step`, one chunk, on its own instead (compile_model)."""
    return ChunkedCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk, step)


def compile_model(model: "GPT") -> nn.Module:
    """The model under torch.compile, for training: the model's graph, and apart from it the
    chunked loss's one chunk (see chunked_cross_entropy)."""
    model.chunk_step = torch.compile(cross_entropy_chunk)
    return torch.compile(model)


# ---- float8 training (--fp8) -------------------------------------------------------------

TORCHAO_MISSING = (
    "--fp8 trains through torchao's float8, which is not installed: pip install torchao "
    "(the release made for your torch, e.g. torchao==0.18.* for torch 2.13)"
)


def float8_worth_it(module: nn.Module, name: str) -> bool:
    """Whether --fp8 trains this layer in float8, as torchao advises for its tensorwise
    recipe (torchao.float8's README, "Performance"; its _auto_filter_for_recipe): an
    nn.Linear whose dimensions are multiples of 16 (float8 tensor cores need them), and not
    a small one: with in_features <= 4096 and out_features <= 1024, torchao's H100 table has
    the casts costing more than the faster matmul saves. The head stays in the run's dtype,
    as do the embeddings and norms: tied, it is no nn.Linear (the embedding matrix through
    F.linear); untied (lm_head), the loss uses its weight through F.linear too, never the
    module, and torchtitan too keeps the output layer out of float8 for accuracy."""
    if not isinstance(module, nn.Linear) or name == "lm_head":
        return False
    out_f, in_f = module.weight.shape
    return in_f % 16 == 0 and out_f % 16 == 0 and not (in_f <= 4096 and out_f <= 1024)


def float8_layers(model: nn.Module) -> list[str]:
    """The names of the layers --fp8 trains in float8 (float8_worth_it)."""
    return [name for name, module in model.named_modules() if float8_worth_it(module, name)]


def n_linear(model: nn.Module) -> int:
    """The model's nn.Linear layers, float8 ones included (an untied lm_head too; a tied
    head is none)."""
    return sum(isinstance(module, nn.Linear) for module in model.modules())


def to_float8(model: nn.Module, layers: list[str] | None = None) -> list[str]:
    """Swap the named layers (default: float8_layers) for torchao's Float8Linear, in place:
    dynamic tensorwise scaling, inputs and weights cast to e4m3 and gradients to e5m2 at each
    matmul, fused into neighbouring kernels by torch.compile. The parameters stay what they
    were (the same names, plain fp32 tensors), so checkpoints, sampling and export see a
    plain model. Call it before FSDP, compile and DDP wrap the model. Returns the names."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:
        raise BadInput(TORCHAO_MISSING) from e
    chosen = float8_layers(model) if layers is None else list(layers)
    convert_to_float8_training(
        model, config=Float8LinearConfig(), module_filter_fn=lambda m, fqn: fqn in chosen
    )
    return chosen


class GPT(nn.Module):
    def __init__(self, model_cfg: GPTConfig):
        super().__init__()
        self.config = model_cfg
        self.wte = nn.Embedding(model_cfg.padded_vocab, model_cfg.n_embd)
        if not model_cfg.rope_theta:
            self.wpe = nn.Embedding(model_cfg.block_size, model_cfg.n_embd)
        self.drop = nn.Dropout(model_cfg.dropout)
        self.h = nn.ModuleList(Block(model_cfg) for _ in range(model_cfg.n_layer))
        self.ln_f = make_norm(model_cfg)
        if not model_cfg.tie_embeddings:
            self.lm_head = nn.Linear(model_cfg.n_embd, model_cfg.padded_vocab, bias=False)
        self.chunk_step = cross_entropy_chunk  # one chunk of the chunked loss (compiled by compile_model)
        self.reset_parameters()

    @property
    def head_weight(self) -> torch.Tensor:
        """The output head's matrix (padded_vocab, n_embd): wte's when tied, else lm_head's."""
        return self.wte.weight if self.config.tie_embeddings else self.lm_head.weight

    def reset_parameters(self):
        model_cfg = self.config
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # Each block adds two residual branches: scale them so the stream's
                # variance does not grow with depth (GPT-2 paper, section 2.3).
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * model_cfg.n_layer))
            elif name.startswith("ln") or ".ln_" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 0.0, 0.02)
        # The head's logits have std = std(head) * sqrt(n_embd) after the final norm. At 0.02
        # a 1,024-wide model would start at ln(V) + 0.2; capping the std at 0.3 / sqrt(n_embd)
        # starts every preset within 0.06 of uniform, as the documented run does (10.82 =
        # ln 50,257). An untied head's padding rows start at zero (never used, never trained).
        nn.init.normal_(self.head_weight, 0.0, min(0.02, 0.3 / math.sqrt(model_cfg.n_embd)))
        if not model_cfg.tie_embeddings:
            with torch.no_grad():
                self.lm_head.weight[model_cfg.vocab_size :] = 0

    def hidden_states(self, idx, cache: KVCache | None = None):
        """The final norm's output (B, T, n_embd) for token ids idx (B, T), after cache.pos
        cached tokens when a cache is given (and then cached too)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the context "
                f"block_size={self.config.block_size}"
            )
        rope = None
        if self.config.rope_theta:
            x = self.drop(self.wte(idx))
            rope = rope_tables(self.config, start, T, idx.device)
        else:
            pos = torch.arange(start, start + T, device=idx.device)
            x = self.drop(self.wte(idx) + self.wpe(pos))
        checkpointing = self.config.activation_checkpointing if self.training and cache is None else False
        for i, block in enumerate(self.h):
            if checkpointing:
                x = checkpointed(block, x, checkpointing, rope)
            else:
                x = block(x, rope, cache, i)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)

    def forward(self, idx, targets):
        """The mean cross-entropy (fp32 scalar) of predicting targets (B, T) from idx (B, T);
        targets of -1 are ignored. What training and validation call (through DDP, FSDP and
        torch.compile); the other calls are next_token_logits, position_losses and logits."""
        x = self.hidden_states(idx)
        if 0 < self.config.loss_chunk < x.shape[0] * x.shape[1]:
            # the logits of a long micro-batch are the largest tensor of a step (43 GiB for
            # 32 x 2,048 x 50,257 in fp32): never hold them all
            return chunked_cross_entropy(
                x.reshape(-1, x.size(-1)),
                self.head_weight,
                targets.reshape(-1),
                self.config.vocab_size,
                self.config.loss_chunk,
                self.chunk_step,
            )
        logits = F.linear(x, self.head_weight)[..., : self.config.vocab_size]
        return F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1
        )

    def next_token_logits(self, idx, cache: KVCache | None = None):
        """Logits (B, vocab) of the token after each row of idx (B, T): only the last
        position goes through the head, all that generation needs. With a cache, idx follows
        the cached tokens and is cached too."""
        x = self.hidden_states(idx, cache)[:, -1]
        return F.linear(x, self.head_weight)[:, : self.config.vocab_size]

    def logits(self, idx):
        """Logits (B, T, vocab) at every position of idx (B, T), padding columns dropped."""
        return F.linear(self.hidden_states(idx), self.head_weight)[..., : self.config.vocab_size]

    def position_losses(self, idx, targets):
        """Cross-entropy (B, T), fp32, at each position whose target is not -1 (0 elsewhere).
        Only those positions go through the head, loss_chunk (or LOSS_CHUNK) of them at a
        time, so scoring a few tokens per row never builds (B, T, vocab) logits."""
        x = self.hidden_states(idx)
        scored = targets != -1
        hidden, wanted = x[scored], targets[scored]
        chunk = self.config.loss_chunk or LOSS_CHUNK
        vocab, head = self.config.vocab_size, self.head_weight
        losses = [
            F.cross_entropy(
                F.linear(hidden[i : i + chunk], head)[:, :vocab].float(),
                wanted[i : i + chunk],
                reduction="none",
            )
            for i in range(0, hidden.size(0), chunk)
        ]
        out = torch.zeros(targets.shape, device=x.device, dtype=torch.float32)
        out[scored] = torch.cat(losses) if losses else out.new_zeros(0)
        return out

    # ---- bookkeeping -------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Trainable parameters, a tied embedding/head matrix counted once and the padding
        rows (never used) left out. non_embedding drops wte, wpe and an untied lm_head."""
        return count_params(self.config, non_embedding)

    def optimizer_groups(self, weight_decay: float, skip: frozenset = frozenset()):
        """AdamW groups: decay on matrices (2-D and up), none on biases and norms.
        named_parameters() yields the tied matrix once. skip: ids of parameters another
        optimizer trains (--optimizer=muon's hidden matrices)."""
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in skip]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]


def describe(model_cfg: GPTConfig) -> str:
    """The architecture's parts in a line, for the planner and the start lines."""
    parts = [
        "learned positions"
        if not model_cfg.rope_theta
        else f"rotary (theta {model_cfg.rope_theta:,.0f}"
        + (f", llama3 scaling x{model_cfg.rope_scaling['factor']:g})" if model_cfg.rope_scaling else ")"),
        "LayerNorm" if model_cfg.norm == "layernorm" else f"RMSNorm (eps {model_cfg.norm_eps:g})",
        "GELU MLP" if model_cfg.mlp == "gelu" else "SwiGLU MLP",
    ]
    if model_cfg.kv_heads != model_cfg.n_head:
        parts.append(f"{model_cfg.kv_heads} k/v heads (grouped-query)")
    if model_cfg.has_qkv_bias and not model_cfg.bias:
        parts.append("q/k/v biases")
    parts.append("tied head" if model_cfg.tie_embeddings else "untied head")
    return ", ".join(parts)


def count_params(model_cfg: GPTConfig, non_embedding: bool = False) -> int:
    """Closed-form parameter count of GPT(model_cfg), as GPT.num_params reports it (and
    transformers' num_parameters() for the same Llama or Qwen2 config)."""
    d, f, hd, b = model_cfg.n_embd, model_cfg.mlp_dim, model_cfg.head_dim, int(model_cfg.bias)
    q, kv, qkv_b = model_cfg.n_head * hd, model_cfg.kv_heads * hd, int(model_cfg.has_qkv_bias)
    norm = d * (1 + b) if model_cfg.norm == "layernorm" else d
    attn = d * (q + 2 * kv) + (q + 2 * kv) * qkv_b + q * d + d * b
    up = 2 if model_cfg.mlp == "swiglu" else 1  # SwiGLU's gate and up
    mlp = up * (d * f + f * b) + f * d + d * b
    blocks = model_cfg.n_layer * (2 * norm + attn + mlp) + norm
    if non_embedding:
        return blocks
    heads = 1 if model_cfg.tie_embeddings else 2
    positions = 0 if model_cfg.rope_theta else model_cfg.block_size * d
    return blocks + heads * model_cfg.vocab_size * d + positions


def flops_per_token(model_cfg: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6N for the
    matmul weights (blocks and the head, tied or not; not the embedding lookup or position
    table) plus 12 * n_layer * (n_head * head_dim) * seq_len for attention scores and values
    (grouped-query attention shares k and v, not this work)."""
    T = seq_len or model_cfg.block_size
    n_matmul = count_params(model_cfg, non_embedding=True) + model_cfg.vocab_size * model_cfg.n_embd
    return 6 * n_matmul + 12 * model_cfg.n_layer * model_cfg.n_head * model_cfg.head_dim * T
