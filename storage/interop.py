"""Weights from elsewhere, in our checkpoint format; and our parameter names in Hugging Face's.

load_external(path) reads a Hugging Face GPT-2 folder (config.json plus model.safetensors
or pytorch_model.bin), a Llama or Qwen2 folder (storage/hf_llama.py: model.safetensors or its
shards) or a nanoGPT ckpt.pt into the dict checkpoint.load_checkpoint returns (step 0, no
optimizer), so train.py --init_from, sample.py and evaluate.py --checkpoint take any of them.
export.py writes the other direction with to_hf_state_dict (GPT-2 names, here only) and
hf_llama.to_hf_llama_state.

All three are the same network under the same module names. What differs is bookkeeping:
  Hugging Face  nests the blocks under "transformer.", stores the four projection weights
                transposed (its Conv1D computes x @ W with W of shape (in, out)), always has
                biases, and has an unpadded vocabulary.
  nanoGPT       nests under "transformer.", keeps nn.Linear's layout, saves the tied head
                twice (lm_head.weight is wte), pads GPT-2's vocab to 50,304 rows, and uses
                the exact (erf) GELU where GPT-2 uses the tanh form.
  ours          pads the embedding to GPTConfig.padded_vocab rows (padding rows are zero
                after an import) and picks the GELU form with GPTConfig.gelu_approximate.
Imports keep the source's GELU (nanoGPT: "none"), so logits agree to float rounding.
"""

import json
import os
import re
import zipfile
from dataclasses import asdict, replace

import torch

from errors import BadInput, MissingDependency
from model import GPT, GPTConfig
from storage.checkpoint import KIND, VERSION, clean_state_dict, pickle_bytes
from storage.hf_llama import (
    ARCHITECTURES,
    SUPPORTED,
    SafetensorsFolder,
    check_folder,
    llama_config,
    read_state,
)
from text.loader import read_meta_pkl
from text.tokenizer import (
    GPT2_EOT_ID,
    HF_KIND,
    get_tokenizer,
    gpt2_files,
    load_tokenizer,
    read_tokenizer_files,
)

HF_PREFIX = "transformer."
# nn.Linear weights (out, in) that Hugging Face's Conv1D stores as (in, out).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Hugging Face activation_function -> GPTConfig.gelu_approximate, and back for export.
HF_GELU = {
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
    "gelu_python_tanh": "tanh",
    "gelu": "none",
    "gelu_python": "none",
}
GELU_TO_HF = {"tanh": "gelu_new", "none": "gelu"}
# Our tokenizer meta (what load_tokenizer reads), written into every export folder.
TOKENIZER_META = "tokenizer_meta.json"
GPT2_VOCAB = GPT2_EOT_ID + 1
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which model.py's LayerNorms use
NANOGPT_GPT2_VOCAB = 50304  # nanoGPT pads GPT-2's vocab to a multiple of 64 itself
# Causal-mask buffers some GPT-2 implementations save; they hold no weights.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def model_shapes(cfg: GPTConfig) -> dict:
    """{name: shape} of GPT(cfg)'s state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GPT(cfg).state_dict().items()}


# ---- ours -> Hugging Face (export.py) ---------------------------------------------------


def to_hf_state_dict(state: dict, cfg: GPTConfig, dtype=torch.float32) -> dict:
    """Our state dict as GPT2LMHeadModel's: prefixed, Conv1D weights transposed, padding
    rows dropped, zero biases where cfg.bias is False, the tied head stored once (as wte)."""
    state = clean_state_dict(state)
    full = model_shapes(replace(cfg, bias=True))
    extra = sorted(set(state) - set(full))
    if extra:
        raise BadInput(
            f"the checkpoint has weights GPT-2's format cannot hold: {extra[:5]}; "
            f"export.py only knows model.py's GPT layout"
        )
    out = {}
    for name, shape in full.items():
        t = state.get(name)
        if t is None:
            if cfg.bias or not name.endswith(".bias"):
                raise BadInput(f"the checkpoint lacks {name}; it is incomplete, export another one")
            t = torch.zeros(shape)  # GPT-2 always has biases; zeros compute what bias=False does
        if name == "wte.weight":
            t = t[: cfg.vocab_size]
        if name.endswith(CONV1D_WEIGHTS):
            t = t.t()
        out[HF_PREFIX + name] = t.detach().to("cpu", dtype).contiguous().clone()
    return out


# ---- any source -> ours -----------------------------------------------------------------


def _strip_names(state: dict, source: str) -> dict:
    """Keys without wrapper prefixes or "transformer.", without mask buffers, and with a
    tied lm_head.weight checked against wte and dropped: our head is wte itself."""
    out = {}
    for k, v in clean_state_dict(state).items():
        k = k.removeprefix(HF_PREFIX)
        if not _MASK_BUFFER.fullmatch(k):
            out[k] = v
    head = out.pop("lm_head.weight", None)
    if head is not None and "wte.weight" in out and not torch.equal(head, out["wte.weight"]):
        raise BadInput(
            f"{source} has an output head (lm_head.weight) different from its token "
            f"embedding; this model ties them, so it cannot load an untied head"
        )
    return out


def to_our_state_dict(
    src: dict, cfg: GPTConfig, transposed: bool, source: str, src_vocab: int | None = None
) -> dict:
    """Our float32 state dict from names already stripped by _strip_names. transposed: the
    projection weights are Conv1D's (Hugging Face); src_vocab: the source's embedding rows
    (default cfg.vocab_size), of which the first vocab_size are kept. Every shape is checked."""
    want = model_shapes(cfg)
    want_src = dict(want, **{"wte.weight": (src_vocab or cfg.vocab_size, cfg.n_embd)})
    missing = [k for k in want if k not in src]
    extra = [k for k in src if k not in want]
    if missing or extra:
        raise BadInput(
            f"{source} does not hold a GPT-2 model of the shape its config says: "
            f"missing {missing[:4]}, unexpected {extra[:4]}"
        )
    out = {}
    for name, shape in want.items():
        t = src[name].to(torch.float32, copy=True)  # never a view of a memory-mapped file
        if transposed and name.endswith(CONV1D_WEIGHTS):
            t = t.t()
        if tuple(t.shape) != want_src[name]:
            raise BadInput(
                f"{source}: {name} has shape {tuple(t.shape)} but its config needs "
                f"{want_src[name]}; the config and the weights disagree"
            )
        if name == "wte.weight":  # our padding rows are zero; the source's own padding goes
            t = torch.cat([t[: cfg.vocab_size], t.new_zeros(shape[0] - cfg.vocab_size, shape[1])])
        out[name] = t.contiguous()
    return out


def _checkpoint(state, cfg, tokenizer_meta, source, map_location) -> dict:
    return {
        "kind": KIND,
        "version": VERSION,
        "step": 0,
        "model": {k: v.to(map_location) for k, v in state.items()},
        "model_config": asdict(cfg),
        "tokenizer": tokenizer_meta,
        "source": source,
    }


# ---- Hugging Face GPT-2 folders ---------------------------------------------------------


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_hf_folder(path: str) -> bool:
    """A folder with a Hugging Face config.json: one that names a model_type, or sits beside
    weights. (Our run folders hold a config.json too: the TrainConfig, with neither.)"""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    if any(os.path.isfile(os.path.join(path, name)) for name in HF_WEIGHTS):
        return True
    try:
        with open(config) as fh:
            return "model_type" in json.load(fh)
    except (OSError, ValueError, TypeError):
        return False


def _hf_config(hf: dict, where: str) -> GPTConfig:
    """Our GPTConfig for a Hugging Face config.json (GPT-2, Llama or Qwen2), or a ValueError
    naming the field that this model cannot compute the same way."""
    if hf.get("model_type") in ARCHITECTURES:
        return llama_config(hf, where)
    if hf.get("model_type") != "gpt2":
        raise BadInput(f"{where} is model_type={hf.get('model_type')!r}; the supported ones are {SUPPORTED}")
    act = hf.get("activation_function", "gelu_new")
    must = {
        "activation_function": act in HF_GELU,
        "layer_norm_epsilon": hf.get("layer_norm_epsilon", LAYER_NORM_EPS) == LAYER_NORM_EPS,
        "scale_attn_weights": hf.get("scale_attn_weights", True) is True,
        "scale_attn_by_inverse_layer_idx": not hf.get("scale_attn_by_inverse_layer_idx", False),
        "add_cross_attention": not hf.get("add_cross_attention", False),
        "tie_word_embeddings": hf.get("tie_word_embeddings", True) is True,
    }
    bad = [k for k, ok in must.items() if not ok]
    if bad:
        raise BadInput(
            f"{where}: {bad[0]}={hf.get(bad[0])!r} is not supported (this model "
            f"needs a GELU activation ({', '.join(HF_GELU)}), layer_norm_epsilon 1e-5, "
            f"scaled attention, no cross-attention, tied embeddings)"
        )
    n_embd = hf.get("n_embd", 768)
    n_inner = hf.get("n_inner")
    if n_inner is not None and (not isinstance(n_inner, int) or n_inner <= 0):
        raise BadInput(
            f"{where}: n_inner={n_inner!r} must be a positive whole number or null (null means 4 x n_embd)"
        )
    return GPTConfig(
        vocab_size=hf.get("vocab_size", GPT2_VOCAB),
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        mlp_hidden=0 if n_inner in (None, 4 * n_embd) else n_inner,
        bias=True,
        gelu_approximate=HF_GELU[act],
    )


def _hf_weights(folder: str) -> dict:
    """The folder's tensors: model.safetensors (or its shards) or pytorch_model.bin."""
    single, index, binary = (os.path.join(folder, name) for name in HF_WEIGHTS)
    if os.path.isfile(single) or os.path.isfile(index):
        load_file = safetensors_torch().load_file
        if os.path.isfile(single):
            return load_file(single)
        with open(index) as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(os.path.join(folder, shard)))
        return state
    if os.path.isfile(binary):
        try:
            return torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BadInput(
                f"{binary} is not a plain state dict ({type(e).__name__}); convert it "
                f"to model.safetensors with transformers' save_pretrained"
            ) from None
    raise BadInput(
        f"{folder} has config.json but no model.safetensors or pytorch_model.bin; "
        f"copy the weights file into it"
    )


def _recorded_tokenizer(folder: str):
    """The tokenizer an export of ours recorded in the folder (TOKENIZER_META), or None."""
    ours = os.path.join(folder, TOKENIZER_META)
    if not os.path.isfile(ours):
        return None
    with open(ours) as fh:
        recorded = json.load(fh)
    if recorded.get("tokenizer") == HF_KIND and "files" not in recorded:
        recorded["files"] = read_tokenizer_files(folder)  # export.py wrote them beside it
    return load_tokenizer(recorded)


def _hf_tokenizer_meta(folder: str, vocab_size: int) -> dict:
    """Our tokenizer for the folder: the one an export recorded, else GPT-2's, whose
    vocabulary must then be the folder's (vocab.json or tokenizer.json, when present)."""
    tok = _recorded_tokenizer(folder)
    if tok is None and vocab_size == GPT2_VOCAB:
        tok = get_tokenizer("gpt2")
        with open(gpt2_files()[1]) as fh:
            gpt2_vocab = json.load(fh)
        for name, get in (("vocab.json", lambda d: d), ("tokenizer.json", lambda d: d["model"]["vocab"])):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    if get(json.load(fh)) != gpt2_vocab:
                        raise BadInput(
                            f"{path} is not GPT-2's vocabulary; only models with "
                            f"GPT-2's tokenizer (or exported by export.py) can be imported"
                        )
                break
    elif tok is None:
        raise BadInput(
            f"{folder} has vocab_size={vocab_size}, not GPT-2's {GPT2_VOCAB}, and no "
            f"{TOKENIZER_META}; only GPT-2-tokenized models (or export.py's) can be imported"
        )
    if tok.n_vocab < vocab_size:
        raise BadInput(
            f"{folder}: the model predicts {vocab_size} ids but its {tok.name} "
            f"tokenizer has {tok.n_vocab}; fix vocab_size in config.json"
        )
    return tok.meta()


def _read_hf_config(folder: str) -> tuple[dict, GPTConfig]:
    where = os.path.join(folder, "config.json")
    try:
        with open(where) as fh:
            hf = json.load(fh)
    except (OSError, ValueError) as e:
        raise BadInput(f"{where} is not readable JSON ({e}); restore the folder's config.json") from None
    if not isinstance(hf, dict):
        raise BadInput(f"{where} is not a model config (a JSON object); restore the folder's config.json")
    return hf, _hf_config(hf, where)


def hf_model_config(folder: str) -> GPTConfig:
    """The GPTConfig of a Hugging Face folder from its config.json alone (no weights read)."""
    return _read_hf_config(folder)[1]


def load_hf_folder(folder: str, map_location="cpu") -> dict:
    """A Hugging Face GPT-2, Llama or Qwen2 folder as one of our checkpoints (float32)."""
    hf, cfg = _read_hf_config(folder)
    if hf.get("model_type") in ARCHITECTURES:
        return _load_llama_folder(folder, hf, cfg, map_location)
    tok_meta = _hf_tokenizer_meta(folder, cfg.vocab_size)
    src = _strip_names(_hf_weights(folder), folder)
    state = to_our_state_dict(src, cfg, transposed=True, source=folder)
    source = {
        "format": "huggingface-gpt2",
        "path": os.path.abspath(folder),
        "activation_function": hf.get("activation_function", "gelu_new"),
    }
    return _checkpoint(state, cfg, tok_meta, source, map_location)


def _load_llama_folder(folder: str, hf: dict, cfg: GPTConfig, map_location) -> dict:
    """A Llama or Qwen2 folder, its safetensors read tensor by tensor into float32 tensors
    allocated once each (hf_llama.read_state): the import's peak is about the fp32 weights."""
    files = SafetensorsFolder(folder)  # headers only: a missing shard fails here, before any read
    check_folder(files, cfg, model_shapes(cfg))
    tok_meta = _llama_tokenizer_meta(folder, cfg)
    state = read_state(files, cfg, model_shapes(cfg))
    source = {
        "format": f"huggingface-{hf['model_type']}",
        "path": os.path.abspath(folder),
        "file_dtype": sorted(set(files.dtypes.values())),
    }
    return _checkpoint(state, cfg, tok_meta, source, map_location)


def _llama_tokenizer_meta(folder: str, cfg: GPTConfig) -> dict:
    """Our tokenizer meta for a Llama or Qwen2 folder: its tokenizer.json and the files
    beside it (text.tokenizer's hf kind, which carries them: an export writes them back),
    or the one an export of ours recorded. Every id it makes must have an embedding row."""
    tok = _recorded_tokenizer(folder) or get_tokenizer(folder)  # the folder's tokenizer.json
    if tok.n_vocab > cfg.padded_vocab:
        raise BadInput(
            f"{folder}: its tokenizer makes ids up to {tok.n_vocab - 1} but the model has "
            f"{cfg.vocab_size} embedding rows; the tokenizer files are another model's"
        )
    return tok.meta()


# ---- nanoGPT ckpt.pt --------------------------------------------------------------------


def _load_torch_file(path: str):
    """The object in a torch.save file, loaded weights-only and memory-mapped, so peeking
    at one of our multi-GB checkpoints reads almost nothing. None if it is not one."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        if _pickle_mentions(path, b"model_args"):
            raise BadInput(
                f"{path!r} looks like a nanoGPT checkpoint but holds objects a safe "
                f"(weights-only) load refuses ({type(e).__name__}); in nanoGPT, re-save "
                f"it as {{'model': ..., 'model_args': ...}} with plain values"
            ) from None
        return None  # load_checkpoint gives the error for files that are not ours either


def _pickle_mentions(path: str, word: bytes) -> bool:
    pkl = pickle_bytes(path)  # a pickle that fails the archive's CRC: a one-line CorruptCheckpoint
    return pkl is not None and word in pkl


def is_nanogpt(obj) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("kind") != KIND
        and isinstance(obj.get("model"), dict)
        and isinstance(obj.get("model_args"), dict)
    )


def _nanogpt_chars(meta_path: str, vocab: int) -> dict:
    """Our char tokenizer from nanoGPT's meta.pkl (loader reads it), checked against the model."""
    meta = read_meta_pkl(
        meta_path,
        fix="pass the meta.pkl of the model's own dataset, or remove it to read the model as GPT-2-tokenized",
    )
    if len(meta["chars"]) != vocab:
        raise BadInput(
            f"{meta_path} has {len(meta['chars'])} characters for a model of vocab {vocab}; "
            f"pass the meta.pkl of the model's own dataset"
        )
    return get_tokenizer("char", meta["chars"]).meta()


def _nanogpt_tokenizer(path: str, obj: dict, vocab: int) -> tuple:
    """(our tokenizer meta, real vocab size). nanoGPT's sample.py reads a char vocabulary
    from data/<dataset>/meta.pkl and otherwise assumes GPT-2: look beside the checkpoint,
    then in nanoGPT's layout (the out_dir sits beside data/)."""
    folder = os.path.dirname(os.path.abspath(path))
    dataset = (obj.get("config") or {}).get("dataset")
    candidates = [os.path.join(folder, "meta.pkl")]
    if isinstance(dataset, str):
        candidates.append(os.path.join(os.path.dirname(folder), "data", dataset, "meta.pkl"))
    meta_path = next((p for p in candidates if os.path.isfile(p)), None)
    if meta_path:
        # nanoGPT's char ids are the sorted alphabet, as ours; our end-of-text id comes
        # after it, an id this model never predicts.
        return _nanogpt_chars(meta_path, vocab), vocab
    if vocab in (GPT2_VOCAB, NANOGPT_GPT2_VOCAB):
        return get_tokenizer("gpt2").meta(), GPT2_VOCAB
    raise BadInput(
        f"{path!r} has vocab_size={vocab}, not GPT-2's, and no meta.pkl was found at "
        f"{candidates[-1]}; copy nanoGPT's data/<dataset>/meta.pkl next to the checkpoint"
    )


def load_nanogpt(path: str, obj: dict, map_location="cpu") -> dict:
    args = obj["model_args"]
    try:
        n_layer, n_head, n_embd = int(args["n_layer"]), int(args["n_head"]), int(args["n_embd"])
        block_size, vocab = int(args["block_size"]), int(args["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(
            f"{path!r}: model_args lacks a usable {e}; it needs n_layer, n_head, "
            f"n_embd, block_size, vocab_size (as nanoGPT's train.py saves)"
        ) from None
    tok_meta, vocab_size = _nanogpt_tokenizer(path, obj, vocab)
    src = _strip_names(obj["model"], path)
    fc = src.get("h.0.mlp.c_fc.weight")
    mlp = fc.shape[0] if fc is not None else 4 * n_embd  # nanoGPT's is 4x; forks may differ
    cfg = GPTConfig(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        mlp_hidden=0 if mlp == 4 * n_embd else mlp,
        bias=bool(args.get("bias", True)),
        gelu_approximate="none",
    )
    state = to_our_state_dict(src, cfg, transposed=False, source=path, src_vocab=vocab)
    best, dataset = obj.get("best_val_loss"), (obj.get("config") or {}).get("dataset")
    source = {
        "format": "nanogpt",
        "path": os.path.abspath(path),
        "iter_num": int(obj.get("iter_num") or 0),
        "best_val_loss": float(best) if best is not None else None,
        "dataset": dataset if isinstance(dataset, str) else None,
    }
    return _checkpoint(state, cfg, tok_meta, source, map_location)


# ---- the one entry point ----------------------------------------------------------------


def load_external(path: str, map_location="cpu") -> dict | None:
    """A Hugging Face GPT-2 folder or a nanoGPT checkpoint as one of our checkpoints (step 0,
    weights only); None for anything else, our own checkpoints included."""
    if os.path.basename(path) in HF_WEIGHTS and is_hf_folder(os.path.dirname(path) or "."):
        path = os.path.dirname(path) or "."  # the weights file of a folder: read the folder
    if is_hf_folder(path):
        return load_hf_folder(path, map_location)
    if not os.path.isfile(path):
        return None
    obj = _load_torch_file(path)
    if is_nanogpt(obj):
        return load_nanogpt(path, obj, map_location)
    return None


def safetensors_torch():
    try:
        import safetensors.torch
    except ImportError as e:
        raise MissingDependency(
            "reading and writing model.safetensors needs the safetensors package; "
            "run `pip install safetensors`"
        ) from e
    return safetensors.torch
