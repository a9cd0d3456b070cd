"""Hugging Face Llama and Qwen2 folders (LlamaForCausalLM, Qwen2ForCausalLM) and our GPT.

llama_config reads config.json into a GPTConfig, refusing any switch this model lacks;
hf_llama_config writes one back. weight_map is the one name map, used both ways: each of our
tensors is one or more of theirs stacked along rows:
  model.embed_tokens                    wte (padded to GPTConfig.padded_vocab rows, zero)
  input_layernorm, post_attention_...   h.i.ln_1, h.i.ln_2 (RMSNorm gains)
  self_attn.q_proj, k_proj, v_proj      h.i.attn.c_attn (and their biases: Qwen2)
  self_attn.o_proj                      h.i.attn.c_proj
  mlp.gate_proj, up_proj                h.i.mlp.c_fc
  mlp.down_proj                         h.i.mlp.c_proj
  model.norm, lm_head (untied only)     ln_f, lm_head (padded like wte)
Both rotate each head's two halves (transformers' rotate_half), so q and k need no permutation.

SafetensorsFolder reads model.safetensors or its shards one tensor at a time, each from a
memory map closed right after, so an import holds one copy of the weights (its own) plus one
tensor in flight, not the file as well.
"""

import json
import os

import torch

from errors import BadInput, MissingDependency
from model import GPTConfig

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# model_type -> the one class whose weights we hold (a causal LM, not a classifier)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
SUPPORTED = "gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)"
ROPE_TYPES = ("default", "llama3")
LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# The file dtypes an import reads (into fp32); quantized formats are refused.
FILE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


# ---- config.json <-> GPTConfig --------------------------------------------------------


def _rope(hf: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling) from transformers 4's rope_theta/rope_scaling or 5's
    rope_parameters."""
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise BadInput(
            f"{where}: rope type {kind!r} is not supported (only {' and '.join(ROPE_TYPES)}, "
            f"as Llama 2/3 and Qwen2.5 use); this model cannot compute its positions the same way"
        )
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise BadInput(
            f"{where}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported "
            f"(rotary embeddings cover every head dimension here)"
        )
    if kind == "default":
        return theta, None
    missing = [k for k in LLAMA3_ROPE_KEYS if k not in params]
    if missing:
        raise BadInput(
            f"{where}: llama3 rope scaling lacks {', '.join(missing)}; restore the published config.json"
        )
    return theta, {"rope_type": "llama3", **{k: params[k] for k in LLAMA3_ROPE_KEYS}}


def _refusals(hf: dict, n_embd: int, n_head: int, n_kv: int) -> list[tuple[str, bool, str]]:
    """(field, acceptable, what this model needs) for each switch it may not have."""
    head_dim = hf.get("head_dim") or n_embd // n_head
    layer_types = hf.get("layer_types") or []
    return [
        ("hidden_act", hf.get("hidden_act", "silu") == "silu", "SwiGLU with silu"),
        ("head_dim", head_dim * n_head == n_embd, "head_dim = hidden_size / num_attention_heads"),
        ("num_key_value_heads", n_kv > 0 and n_head % n_kv == 0, "a divisor of num_attention_heads"),
        (
            "attention_bias",
            not hf.get("attention_bias", False),
            "no bias on o_proj (Qwen2's q/k/v biases are fine)",
        ),
        ("mlp_bias", not hf.get("mlp_bias", False), "an MLP without biases"),
        ("use_sliding_window", not hf.get("use_sliding_window", False), "full attention in every layer"),
        ("layer_types", all(t == "full_attention" for t in layer_types), "full attention in every layer"),
        ("use_mrope", not hf.get("use_mrope", False), "plain (1-D) rotary positions"),
    ]


def llama_config(hf: dict, where: str) -> GPTConfig:
    """Our GPTConfig for a Llama or Qwen2 config.json, or a one-line BadInput naming the
    field this model cannot compute the same way."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise BadInput(f"{where} is model_type={kind!r}; the supported ones are {SUPPORTED}")
    arch = hf.get("architectures") or [ARCHITECTURES[kind]]
    if arch != [ARCHITECTURES[kind]]:
        raise BadInput(
            f"{where} is a {'/'.join(map(str, arch))}; only {ARCHITECTURES[kind]} (the causal "
            f"language model) can be imported"
        )
    missing = [k for k in REQUIRED if not isinstance(hf.get(k), int) or hf[k] <= 0]
    if missing:
        raise BadInput(
            f"{where} lacks a positive {', '.join(missing)}; restore the model's published config.json"
        )
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    n_kv = hf.get("num_key_value_heads") or n_head
    for field, ok, need in _refusals(hf, n_embd, n_head, n_kv):
        if not ok:
            raise BadInput(
                f"{where}: {field}={hf.get(field)!r} is not supported (this model needs {need}); "
                f"supported architectures: {SUPPORTED}"
            )
    theta, scaling = _rope(hf, where)
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=n_kv,
        n_embd=n_embd,
        mlp_hidden=hf["intermediate_size"],
        bias=False,
        qkv_bias=kind == "qwen2",
        norm="rmsnorm",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        rope_theta=theta,
        rope_scaling=scaling,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def hf_family(cfg: GPTConfig) -> str:
    """Which Hugging Face class holds this model: "gpt2", "llama" or "qwen2"; a BadInput
    for a mix of switches that none of them has."""
    kv = cfg.n_kv_head or cfg.n_head
    qkv_bias = cfg.bias if cfg.qkv_bias is None else cfg.qkv_bias
    if cfg.norm == "layernorm" and cfg.mlp == "gelu" and not cfg.rope_theta and kv == cfg.n_head:
        if cfg.tie_embeddings and qkv_bias == cfg.bias:
            return "gpt2"
    if cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.rope_theta > 0 and not cfg.bias:
        return "qwen2" if qkv_bias else "llama"
    raise BadInput(
        f"this model (norm={cfg.norm}, mlp={cfg.mlp}, rope_theta={cfg.rope_theta}, bias={cfg.bias}, "
        f"qkv_bias={cfg.qkv_bias}, n_kv_head={cfg.n_kv_head}, tie_embeddings={cfg.tie_embeddings}) has no "
        f"Hugging Face class: export writes GPT-2 (layernorm, gelu, learned positions, tied) or "
        f"Llama/Qwen2 (rmsnorm, swiglu, rope, no biases but Qwen2's q/k/v ones)"
    )


def hf_llama_config(cfg: GPTConfig, bos_id, eos_id, dtype: str) -> dict:
    """config.json of LlamaForCausalLM (no biases) or Qwen2ForCausalLM (q/k/v biases) for cfg,
    in transformers 4's spelling (rope_theta, rope_scaling), which 5 reads too."""
    kind = hf_family(cfg)
    if kind == "gpt2":
        raise BadInput("a GPT-2-shaped model exports as GPT-2, not Llama")
    out = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head or cfg.n_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": dtype,
        "dtype": dtype,  # transformers 4 reads the first, 5 the second
    }
    if kind == "llama":
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return out


# ---- the weight-name map ---------------------------------------------------------------


def weight_map(cfg: GPTConfig) -> dict[str, list[tuple[str, int]]]:
    """{our name: [(Hugging Face name, its rows), ...]}: ours is theirs stacked along dim 0,
    in this order (and then, for wte and lm_head, our zero padding rows)."""
    d, hd, kv, mlp = cfg.n_embd, cfg.head_dim, cfg.n_kv_head or cfg.n_head, cfg.mlp_dim
    qkv = (("q", cfg.n_head * hd), ("k", kv * hd), ("v", kv * hd))
    out = {"wte.weight": [("model.embed_tokens.weight", cfg.vocab_size)]}
    for i in range(cfg.n_layer):
        ours, theirs = f"h.{i}.", f"model.layers.{i}."
        out[ours + "ln_1.weight"] = [(theirs + "input_layernorm.weight", d)]
        out[ours + "attn.c_attn.weight"] = [(f"{theirs}self_attn.{p}_proj.weight", n) for p, n in qkv]
        if cfg.qkv_bias:
            out[ours + "attn.c_attn.bias"] = [(f"{theirs}self_attn.{p}_proj.bias", n) for p, n in qkv]
        out[ours + "attn.c_proj.weight"] = [(theirs + "self_attn.o_proj.weight", d)]
        out[ours + "ln_2.weight"] = [(theirs + "post_attention_layernorm.weight", d)]
        out[ours + "mlp.c_fc.weight"] = [
            (theirs + "mlp.gate_proj.weight", mlp),
            (theirs + "mlp.up_proj.weight", mlp),
        ]
        out[ours + "mlp.c_proj.weight"] = [(theirs + "mlp.down_proj.weight", d)]
    out["ln_f.weight"] = [("model.norm.weight", d)]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = [("lm_head.weight", cfg.vocab_size)]
    return out


def _ignorable(name: str, cfg: GPTConfig) -> bool:
    """Tensors a folder may hold that carry nothing we compute: old checkpoints' rotary
    inv_freq buffers, and a tied head saved beside the embedding it equals."""
    return name.endswith("rotary_emb.inv_freq") or (cfg.tie_embeddings and name == "lm_head.weight")


# ---- reading -----------------------------------------------------------------------------


class SafetensorsFolder:
    """The tensors of a folder's model.safetensors, or of the shards its index names, read
    one at a time: each get() maps its file, copies the one tensor out and unmaps it."""

    def __init__(self, folder: str):
        self.folder = folder
        single, index = os.path.join(folder, SAFETENSORS), os.path.join(folder, SAFETENSORS_INDEX)
        if os.path.isfile(single):
            files = [single]
        elif os.path.isfile(index):
            files = [os.path.join(folder, f) for f in _shards(index)]
        else:
            raise BadInput(
                f"{folder} has config.json but no {SAFETENSORS} or {SAFETENSORS_INDEX}; "
                f"download the model's weights into it"
            )
        self.where, self.shapes, self.dtypes = {}, {}, {}
        for path in files:
            with _open(path) as fh:  # reads the header only
                for name in fh.keys():
                    piece = fh.get_slice(name)
                    self.where[name] = path
                    self.shapes[name] = tuple(piece.get_shape())
                    self.dtypes[name] = piece.get_dtype()

    def names(self) -> set:
        return set(self.where)

    def get(self, name: str) -> torch.Tensor:
        with _open(self.where[name]) as fh:
            return fh.get_tensor(name)


def _shards(index: str) -> list[str]:
    """The shard files an index names, all present, or a ValueError listing the missing."""
    try:
        with open(index) as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadInput(f"{index} is not a readable weight index ({e}); download it again") from None
    folder = os.path.dirname(index)
    missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
    if missing:
        raise BadInput(
            f"{folder} lacks {len(missing)} of the {len(shards)} shards its index names "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); download them"
        )
    return shards


def _open(path: str):
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise MissingDependency(
            "reading model.safetensors needs the safetensors package; pip install safetensors"
        ) from e
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise BadInput(f"{path} is not a readable safetensors file ({e}); download it again") from None


def check_folder(files: SafetensorsFolder, cfg: GPTConfig, shapes: dict) -> dict:
    """weight_map(cfg), after checking that the folder holds exactly those tensors, each of
    the shape that GPT(cfg)'s (shapes: {name: shape}) implies and a float dtype. Only the
    files' headers are read."""
    mapping = weight_map(cfg)
    if set(mapping) != set(shapes):
        raise RuntimeError(f"weight_map and model.py disagree: {sorted(set(mapping) ^ set(shapes))[:4]}")
    wanted = {hf for parts in mapping.values() for hf, _ in parts}
    have = files.names()
    missing = sorted(wanted - have)
    extra = sorted(n for n in have - wanted if not _ignorable(n, cfg))
    if missing or extra:
        raise BadInput(
            f"{files.folder} does not hold the model its config.json describes: missing "
            f"{missing[:3]}, unexpected {extra[:3]}; re-download the weights or the config"
        )
    for name, parts in mapping.items():
        for hf, rows in parts:
            want = (rows, *shapes[name][1:])
            if files.shapes[hf] != want:
                raise BadInput(
                    f"{files.where[hf]}: {hf} has shape {files.shapes[hf]} but config.json needs "
                    f"{want}; the config and the weights disagree"
                )
            if files.dtypes[hf] not in FILE_DTYPES:
                raise BadInput(
                    f"{hf} is {files.dtypes[hf]}; only {', '.join(FILE_DTYPES)} weights can be imported "
                    f"(not quantized ones): use the model's unquantized release"
                )
    return mapping


def read_state(files: SafetensorsFolder, cfg: GPTConfig, shapes: dict) -> dict:
    """Our float32 state dict (shapes: {name: shape} of GPT(cfg)), each tensor allocated once
    in its final size and dtype and filled from the file tensor by tensor."""
    mapping = check_folder(files, cfg, shapes)
    state = {}
    for name, shape in shapes.items():
        parts = mapping[name]
        rows = sum(n for _, n in parts)
        t = torch.empty(shape, dtype=torch.float32)
        if rows < shape[0]:
            t[rows:].zero_()  # the vocabulary's padding rows
        row = 0
        for hf, n in parts:
            t[row : row + n].copy_(files.get(hf))  # file dtype -> fp32, one source tensor alive
            row += n
        state[name] = t
    return state


def to_hf_llama_state(state: dict, cfg: GPTConfig, dtype=torch.float32) -> dict:
    """Our state dict as LlamaForCausalLM's / Qwen2ForCausalLM's: fused tensors split, padding
    rows dropped, a tied head left out (transformers ties it on load)."""
    mapping = weight_map(cfg)
    extra = sorted(set(state) - set(mapping))
    missing = sorted(set(mapping) - set(state))
    if extra or missing:
        raise BadInput(
            f"the checkpoint does not hold the model its config describes: missing {missing[:3]}, "
            f"unexpected {extra[:3]}; export another checkpoint"
        )
    out = {}
    for name, parts in mapping.items():
        t, row = state[name], 0
        for hf, n in parts:
            out[hf] = t[row : row + n].detach().to("cpu", dtype).contiguous().clone()
            row += n
    return out
