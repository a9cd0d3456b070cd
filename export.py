"""Export a checkpoint as a Hugging Face folder (GPT2LMHeadModel, or LlamaForCausalLM /
Qwen2ForCausalLM for a model of that shape), for transformers, lm-evaluation-harness, vLLM,
llama.cpp's converter, and sharing.

    python export.py --checkpoint=checkpoints/<run> --out=exports/<name>
    python export.py --checkpoint=checkpoints/<run>/checkpoint_step_5000.pt --out=exports/x \
                     --dtype=bfloat16
    python export.py --checkpoint=out-shakespeare/ckpt.pt --out=exports/y   # nanoGPT's, too

The folder loads offline with transformers.AutoModelForCausalLM.from_pretrained(folder) and, for
GPT-2-tokenized models and imported Llama/Qwen ones, AutoTokenizer.from_pretrained(folder).
A Llama- or Qwen-shaped model (rmsnorm, swiglu, rope: storage/hf_llama.py) gets Llama's or
Qwen2's config.json and tensor names, and the tokenizer files it was imported with. A GPT-2
export holds:
  config.json             GPT-2's fields; n_inner for MLP widths other than 4x; vocab without
                          our padding rows; tied embeddings; bos/eos = the end-of-text id
  model.safetensors       Conv1D weights transposed, the tied matrix stored once, {"format": "pt"}
  generation_config.json  bos/eos
  tokenizer_meta.json     our tokenizer (what load_tokenizer reads); for a char model also its
                          vocabulary ("vocab": character -> id)
  source_checkpoint.json  the checkpoint it came from: path, step, and the SHA-256 digest it
                          was verified against
  vocab.json, merges.txt, tokenizer_config.json   GPT-2 tokenizer only: the files tokenizer.py
                          verifies, and split_special_tokens so that a literal "<|endoftext|>"
                          in text is text, as in training
The folder appears complete or not at all (written beside it, then renamed).
"""

import argparse
import contextlib
import json
import os
import shutil
import sys

import torch

from errors import BadInput, CannotWrite, run_cli
from model import TRAINING_FIELDS, GPTConfig
from storage.atomic_files import atomic_path
from storage.checkpoint import KIND
from storage.hf_llama import hf_family, hf_llama_config, to_hf_llama_state
from storage.interop import GELU_TO_HF, TOKENIZER_META, safetensors_torch, to_hf_state_dict
from storage.weights import find_and_load, tokenizer_meta
from text.tokenizer import EOT_TEXT, HF_KIND, gpt2_files, load_tokenizer, tokenizer_file_bytes

SOURCE_FILE = "source_checkpoint.json"  # the checkpoint an export came from, with its digest
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# GPTConfig fields and what GPT-2's format does with them; any other field is an error,
# because a field export.py does not know may change what the model computes.
KNOWN_FIELDS = {
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "mlp_hidden",
    "bias",  # bias=False exports zero biases: the same function
    "gelu_approximate",
    "pad_vocab_multiple",
    # the Llama/Qwen switches: hf_family picks the class that has the checkpoint's values
    "n_kv_head",
    "qkv_bias",
    "norm",
    "norm_eps",
    "mlp",
    "rope_theta",
    "rope_scaling",
    "tie_embeddings",
    *TRAINING_FIELDS,
}


def model_config(saved: dict) -> GPTConfig:
    """The checkpoint's GPTConfig, refusing fields no Hugging Face format here can express."""
    unknown = sorted(set(saved) - KNOWN_FIELDS)
    if unknown:
        raise BadInput(
            f"model field {unknown[0]}={saved[unknown[0]]!r} has no GPT-2 or Llama equivalent; "
            f"export.py cannot express it in a Hugging Face format"
        )
    gelu = saved.get("gelu_approximate", "tanh")
    if gelu not in GELU_TO_HF:
        raise BadInput(
            f"model field gelu_approximate={gelu!r} has no GPT-2 activation; "
            f"export supports {sorted(GELU_TO_HF)}"
        )
    cfg = GPTConfig(**saved)
    hf_family(cfg)  # a mix of switches no Hugging Face class has is refused here
    return cfg


def hf_config(cfg: GPTConfig, eot_id: int | None, dtype: str) -> dict:
    mlp = cfg.mlp_dim
    gelu = cfg.gelu_approximate
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,  # older readers (llama.cpp's converter) take the context from n_ctx
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if mlp == 4 * cfg.n_embd else mlp,
        "activation_function": GELU_TO_HF[gelu],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": dtype,
        "dtype": dtype,  # transformers 4 reads the first, 5 the second
    }


def tokenizer_files(tok, block_size: int) -> tuple[dict, str]:
    """({file name: bytes}, a note for the user) for the tokenizer `tok`."""
    meta = tok.meta()
    files = {}
    if tok.name == "gpt2":
        vocab_bpe, encoder_json = gpt2_files()  # hash-checked against tiktoken's pins
        with open(encoder_json, "rb") as fh:
            files["vocab.json"] = fh.read()
        with open(vocab_bpe, "rb") as fh:
            files["merges.txt"] = fh.read()
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": block_size,
            "bos_token": EOT_TEXT,
            "eos_token": EOT_TEXT,
            "unk_token": EOT_TEXT,
            "add_prefix_space": False,
            "add_bos_token": False,
            "errors": "replace",
            # Training data spells a literal "<|endoftext|>" out as text (tiktoken's
            # encode_ordinary); the end-of-text id only separates documents.
            "split_special_tokens": True,
            "clean_up_tokenization_spaces": False,
        }  # decode gives back the text exactly
        files["tokenizer_config.json"] = _json_bytes(config)
        note = "tokenizer: GPT-2's (vocab.json, merges.txt, tokenizer_config.json)"
    elif tok.name == "char":
        meta["vocab"] = {c: i for i, c in enumerate(tok.chars)} | {EOT_TEXT: tok.eot_id}
        note = (
            f"tokenizer: no Hugging Face tokenizer fits a character-level model, so none was "
            f"written; the vocabulary is in {TOKENIZER_META} (\"vocab\": character -> id, "
            f"{EOT_TEXT} is id {tok.eot_id})"
        )
    elif tok.name == HF_KIND:
        files.update(tokenizer_file_bytes(meta))
        meta.pop("files")  # they are the folder's own files now
        note = f"tokenizer: its own files ({', '.join(sorted(tokenizer_file_bytes(tok.meta())))})"
    else:
        note = (
            f"tokenizer: no Hugging Face tokenizer files for tiktoken's {tok.name!r}; tokenize "
            f"with tiktoken.get_encoding({tok.name!r}), whose ids the model uses"
        )
    files[TOKENIZER_META] = _json_bytes(meta)
    return files, note


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def hf_tensors(state: dict, cfg: GPTConfig, dtype_name: str) -> dict:
    """The Hugging Face tensors of the model's family (hf_family), in dtype_name, all finite."""
    if hf_family(cfg) == "gpt2":
        tensors = to_hf_state_dict(state, cfg, DTYPES[dtype_name])
    else:
        tensors = to_hf_llama_state(state, cfg, DTYPES[dtype_name])
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise BadInput(
                f"{name} has values that overflow {dtype_name} (or were not finite in "
                f"the checkpoint); export with --dtype=bfloat16 or float32"
            )
    return tensors


def check_out(out: str):
    """Refuse an --out that cannot become the export folder, before anything is loaded."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise BadInput(f"{out} already exists; remove it or pick another --out")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):  # the folders write_folder would create
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise BadInput(f"cannot create {out}: {parent} is a file, not a folder; pick another --out")
    if not os.access(parent, os.W_OK):  # a read-only filesystem says so even to root
        raise BadInput(
            f"cannot create {out}: {parent} is not writable (a read-only filesystem, or "
            f"its permissions); pick another --out"
        )


class ExportWriteError(CannotWrite):
    """The export folder could not be written; the message says why."""


def write_folder(out: str, files: dict, tensors: dict):
    """Write every file into a hidden folder beside `out`, then rename it to `out`: a kill
    midway leaves no half-written export under the final name, and a failed write (a full
    disk, a read-only filesystem) is one line that leaves nothing behind."""
    check_out(out)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp.{os.getpid()}")
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, data in files.items():
            with atomic_path(os.path.join(tmp, name)) as path, open(path, "wb") as fh:
                fh.write(data)
        with atomic_path(os.path.join(tmp, "model.safetensors")) as path:
            safetensors_torch().save_file(tensors, path, metadata={"format": "pt"})
            # safetensors creates its file owner-only; give it the permissions of the others
            shutil.copymode(os.path.join(tmp, "config.json"), path)
        os.replace(tmp, out)  # also replaces an empty folder of that name
    except OSError as e:
        raise ExportWriteError(
            f"could not write {out} ({e.strerror or e}); nothing was left there: "
            f"make room, or pick another --out, and export again"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def source_record(ckpt: dict, path: str | None) -> dict:
    """Where an export came from: the checkpoint, its step, and the digest it was verified
    against (checkpoint.digest's "content", which `python -m storage.checkpoint RUN` lists)."""
    digest = ckpt.get("digest")
    record = {
        "checkpoint": os.path.abspath(path) if path else None,
        "format": (ckpt.get("source") or {}).get("format", KIND),
        "step": ckpt.get("step"),
        "sha256": digest["content"] if digest else None,
    }
    if not digest:
        record["note"] = (
            "a Hugging Face or nanoGPT source carries no digest of ours"
            if ckpt.get("source")
            else "the checkpoint was saved before checkpoints carried a digest"
        )
    return record


def export(ckpt: dict, out: str, dtype: str = "float32", source: str | None = None) -> list[str]:
    """Write ckpt (one of ours, or a converted one: weights.load_weights), loaded from the
    path `source`, to the folder `out`; return lines describing what was written."""
    cfg = model_config(ckpt["model_config"])
    tok = load_tokenizer(tokenizer_meta(ckpt))
    if cfg.vocab_size > tok.n_vocab and tok.name != HF_KIND:  # Qwen2.5's embedding has unused rows
        raise BadInput(
            f"the model predicts {cfg.vocab_size} ids but its {tok.name} tokenizer "
            f"has {tok.n_vocab}; the checkpoint's tokenizer entry does not belong to it"
        )
    family = hf_family(cfg)
    files, note = tokenizer_files(tok, cfg.block_size)
    if family == "gpt2":
        # An end-of-text id the model cannot predict (a nanoGPT char model's) is no use as bos/eos.
        eot = tok.eot_id if tok.eot_id < cfg.vocab_size else None
        files["config.json"] = _json_bytes(hf_config(cfg, eot, dtype))
        files.setdefault("generation_config.json", _json_bytes({"bos_token_id": eot, "eos_token_id": eot}))
        shape = f"GPT-2 {cfg.n_layer} x {cfg.n_embd}, MLP {cfg.mlp_dim}"
    else:
        bos, eos = special_ids(tok, files)
        files["config.json"] = _json_bytes(hf_llama_config(cfg, bos, eos, dtype))
        files.setdefault("generation_config.json", _json_bytes({"bos_token_id": bos, "eos_token_id": eos}))
        shape = (
            f"{hf_llama_config(cfg, bos, eos, dtype)['architectures'][0]} {cfg.n_layer} x {cfg.n_embd}, "
            f"{cfg.n_head} heads ({cfg.n_kv_head or cfg.n_head} key/value), MLP {cfg.mlp_dim}"
        )
    record = source_record(ckpt, source)
    files[SOURCE_FILE] = _json_bytes(record)
    tensors = hf_tensors(ckpt["model"], cfg, dtype)
    write_folder(out, files, tensors)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    lines = [
        f"wrote {out}: {shape}, context {cfg.block_size}, vocab {cfg.vocab_size:,}, "
        f"{dtype} weights ({size / 2**20:,.1f} MiB)",
        note,
        f"source: {record['checkpoint']}, step {record['step']}, "
        f"{'sha256 ' + record['sha256'] if record['sha256'] else 'no digest'} ({SOURCE_FILE})",
    ]
    if family == "gpt2" and cfg.mlp_dim != 4 * cfg.n_embd:
        lines.append(
            f"note: n_inner={cfg.mlp_hidden}: transformers and vLLM read it; llama.cpp's "
            f"GPT-2 converter assumes a 4x MLP and needs a patch for this model"
        )
    if family == "gpt2" and cfg.gelu_approximate == "none":
        lines.append(
            "note: activation_function=gelu (exact, as nanoGPT): transformers computes it "
            "exactly; llama.cpp's GPT-2 uses the tanh form"
        )
    return lines


def special_ids(tok, files: dict) -> tuple:
    """(bos, eos) ids of a Llama/Qwen export: the carried generation_config.json's, else the
    end-of-text id for both."""
    gen = files.get("generation_config.json")
    if gen is not None:
        gen = json.loads(gen)
        return gen.get("bos_token_id"), gen.get("eos_token_id")
    return tok.eot_id, tok.eot_id


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Export a checkpoint as a Hugging Face folder (GPT-2, Llama or Qwen2).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file, run folder, Hugging Face folder or nanoGPT ckpt.pt "
        "(default: best of the newest run in checkpoints/)",
    )
    p.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="weights' dtype in the file")
    p.add_argument("--out_dir", default="checkpoints", help="where to look for runs without --checkpoint")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_out(args.out)  # before the (slow) load
    path, ckpt = find_and_load(args.checkpoint, args.out_dir)
    print(f"exporting {path} (step {ckpt.get('step')})", file=sys.stderr)
    for line in export(ckpt, args.out, args.dtype, source=path):
        print(line)
    print(
        f"check it: python -c \"from transformers import AutoModelForCausalLM; "
        f"AutoModelForCausalLM.from_pretrained('{args.out}')\""
    )


if __name__ == "__main__":
    run_cli(main)
