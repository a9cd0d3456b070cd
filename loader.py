"""Batches of random token windows from a prepared dataset (data/<name>/{train,val}.bin).

Which windows a step sees is a pure function of (seed, split, step, index of the
sequence in the global batch). So one process with 8x accumulation sees exactly the
windows 8 ranks see, and a resumed run draws the same batches as an uninterrupted one.
"""
import json
import os

import numpy as np
import torch

SPLITS = {"train": 0, "val": 1}
INCOMPLETE_MARKER = ".incomplete"  # prepare_data.py holds it while it writes a dataset


def read_meta(data_dir: str) -> dict:
    """The dataset's meta.json. nanoGPT-prepared data without one is taken as GPT-2/uint16."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder {data_dir!r} not found; prepare it with "
                                f"`{_prepare_hint(data_dir)}` or set --data_dir")
    if os.path.exists(os.path.join(data_dir, INCOMPLETE_MARKER)):
        raise FileNotFoundError(f"{data_dir} was left half-written by an interrupted prepare_data.py; "
                                f"run it again for this dataset")
    for split in SPLITS:
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing; rerun `{_prepare_hint(data_dir)}`")
        if os.path.getsize(path) == 0:
            raise FileNotFoundError(f"{path} is empty: the corpus had too few documents for a {split} "
                                    f"split (documents are split whole); add input or split the text "
                                    f"into more documents")
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        return {"tokenizer": "gpt2", "vocab_size": 50257, "dtype": "uint16", "eot_id": 50256}
    with open(path) as fh:
        return json.load(fh)


def _prepare_hint(data_dir: str) -> str:
    name = os.path.basename(os.path.normpath(data_dir))
    if name == "shakespeare":
        return "python prepare_data.py"
    if name.startswith("shakespeare_"):  # the default corpus with another tokenizer
        return f"python prepare_data.py --tokenizer={name.split('_', 1)[1]} --name={name}"
    return f"python prepare_data.py --input=YOUR_FILES --name={name}"


class TokenWindows:
    """Reads (x, y) batches of block_size tokens from one split's .bin memmap."""

    def __init__(self, data_dir: str, split: str, block_size: int, meta: dict, seed: int):
        self.path = os.path.join(data_dir, f"{split}.bin")
        self.dtype = np.dtype(meta.get("dtype", "uint16"))
        self.n_tokens = os.path.getsize(self.path) // self.dtype.itemsize
        self.block_size = block_size
        self.split_id = SPLITS[split]
        self.seed = seed
        if self.n_tokens < block_size + 1:
            raise ValueError(f"{self.path} holds {self.n_tokens:,} tokens, fewer than block_size + 1 = "
                             f"{block_size + 1:,}; lower --block_size or prepare more data")

    def starts(self, step: int, global_batch: int, stream: int = 0) -> np.ndarray:
        """Window starts for every sequence of the global batch at this step. stream
        separates draws for different purposes (0: training, 1: evaluation)."""
        rng = np.random.default_rng([self.seed, self.split_id, stream, step])
        return rng.integers(0, self.n_tokens - self.block_size, size=global_batch)

    def batch(self, step: int, global_batch: int, first: int, count: int, device="cpu", stream: int = 0):
        """Sequences first..first+count-1 of the global batch of `step`, as int64 (x, y)."""
        starts = self.starts(step, global_batch, stream)[first:first + count]
        # A fresh memmap per batch: a long-lived one keeps every page it ever touched
        # counted in resident memory, which grows without bound over a long run.
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        windows = np.stack([data[s:s + self.block_size + 1] for s in starts]).astype(np.int64)
        del data
        xy = torch.from_numpy(windows)
        x, y = xy[:, :-1], xy[:, 1:]
        if torch.device(device).type == "cuda":
            return (x.pin_memory().to(device, non_blocking=True),
                    y.pin_memory().to(device, non_blocking=True))
        return x.contiguous(), y.contiguous()


def check_vocab(meta: dict, model_vocab: int, data_dir: str):
    if meta["vocab_size"] > model_vocab:
        raise ValueError(f"data in {data_dir} has vocab {meta['vocab_size']:,} but the model's is "
                         f"{model_vocab:,}; the model must be built with the data's vocab")
