"""A prepared dataset (data/<name>/{train,val}.bin + meta.json): its checked meta, and
batches of random token windows.

Which windows a step sees is a pure function of (seed, split, step, index of the
sequence in the global batch). So one process with 8x accumulation sees exactly the
windows 8 ranks see, and a resumed run draws the same batches as an uninterrupted one.

read_meta is the one reader of meta.json. Data that does not match it is refused before
training (a meta that does not parse or lacks a key, a dtype other than uint16/uint32, a
.bin that is not whole tokens, ids that do not fit the model), and an id that slips
through is caught per batch, so it never reaches the embedding as an IndexError (a
device-side assert on a GPU). nanoGPT's folders work too: its char-level meta.pkl is
read, and a folder with no meta at all holds GPT-2 ids.
"""

import hashlib
import json
import os
import pickle
import re
import sys

import numpy as np
import torch

from errors import BadInput, NotFound
from text.tokenizer import (
    GPT2_EOT_ID,
    HF_KIND,
    TOKENIZER_JSON,
    describe_tokenizer,
    get_tokenizer,
    load_tokenizer,
    tokenizer_identity,
)

SPLITS = {"train": 0, "val": 1}
INCOMPLETE_MARKER = ".incomplete"  # prepare_data.py holds it while it writes a dataset
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}  # little-endian, as nanoGPT writes
# The fix for an empty split, which prepare_data.py gives when it writes one and read_meta when it refuses it.
MORE_DOCUMENTS = (
    "give the corpus two or more documents (documents are split whole): several .txt files "
    "(one document each) or a .jsonl with one document per line"
)
REQUIRED = {"tokenizer": str, "vocab_size": int, "dtype": str, "eot_id": int}  # + "chars" for char
GPT2_META = {"tokenizer": "gpt2", "vocab_size": GPT2_EOT_ID + 1, "dtype": "uint16", "eot_id": GPT2_EOT_ID}
# Without a recorded max_token_id, check_vocab reads data up to this size whole (about a
# second from disk) and, above it, SCAN_BLOCKS evenly spaced blocks; the per-batch check
# covers the rest, so 51B tokens are not read at every start.
FULL_SCAN_BYTES = 1 << 30
SCAN_BLOCKS, SCAN_BLOCK_TOKENS = 64, 1 << 18


# ---------------------------------------------------------------- meta


def read_meta(data_dir: str) -> dict:
    """The dataset's meta, checked against its train.bin and val.bin (see load_meta)."""
    _check_folder(data_dir)
    paths = {split: os.path.join(data_dir, f"{split}.bin") for split in SPLITS}
    for split, path in paths.items():
        if not os.path.isfile(path):
            raise NotFound(f"{path} is missing; rerun `{_prepare_hint(data_dir)}`")
        if os.path.getsize(path) == 0:
            raise NotFound(
                f"{path} is empty: the corpus had too few documents for a {split} split; "
                f"{MORE_DOCUMENTS}, and rerun `{_prepare_hint(data_dir)}`"
            )
    meta = _read_meta_files(data_dir)
    itemsize = DTYPES[meta["dtype"]].itemsize
    for split, path in paths.items():
        size = os.path.getsize(path)
        if size % itemsize:
            raise BadInput(
                f"{path} is {size:,} bytes, not a whole number of {meta['dtype']} tokens "
                f"({itemsize} bytes each) as {_meta_source(data_dir)} says: it is truncated "
                f"or has another dtype; rerun `{_prepare_hint(data_dir)}`"
            )
        recorded = meta.get(f"{split}_tokens")
        if recorded is not None and recorded != size // itemsize:
            raise BadInput(
                f"{path} holds {size // itemsize:,} tokens but {_meta_source(data_dir)} says "
                f"{split}_tokens {recorded:,}: they are from different runs of "
                f"prepare_data.py; rerun `{_prepare_hint(data_dir)}`"
            )
    return meta


def load_meta(data_dir: str) -> dict:
    """The dataset's meta without looking at its .bin files (for sampling): meta.json,
    checked; else nanoGPT's char-level meta.pkl as our char meta; else GPT-2's."""
    _check_folder(data_dir)
    return _read_meta_files(data_dir)


def _check_folder(data_dir: str):
    if not os.path.isdir(data_dir):
        raise NotFound(
            f"data folder {data_dir!r} not found; prepare it with "
            f"`{_prepare_hint(data_dir)}` or set --data_dir"
        )
    if os.path.exists(os.path.join(data_dir, INCOMPLETE_MARKER)):
        raise NotFound(
            f"{data_dir} was left half-written by an interrupted prepare_data.py; "
            f"run it again for this dataset"
        )


def _read_meta_files(data_dir: str) -> dict:
    path = os.path.join(data_dir, "meta.json")
    if os.path.isfile(path):
        return _read_meta_json(path, data_dir)
    if os.path.isfile(os.path.join(data_dir, "meta.pkl")):
        return read_meta_pkl(
            os.path.join(data_dir, "meta.pkl"),
            fix=f"write a meta.json by preparing the text with `{_prepare_hint(data_dir)}`",
        )
    print(
        f"note: {data_dir} has no meta.json or meta.pkl; assuming GPT-2 token ids (vocab "
        f"{GPT2_META['vocab_size']}, uint16), as nanoGPT's GPT-2 data has them",
        file=sys.stderr,
    )
    return dict(GPT2_META)


def _read_meta_json(path: str, data_dir: str) -> dict:
    fix = f"rerun `{_prepare_hint(data_dir)}` to rewrite it"
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(meta, dict):
        raise BadInput(f"{path} holds a JSON {type(meta).__name__}, not an object; {fix}")
    required = {**REQUIRED, "chars": str} if meta.get("tokenizer") == "char" else REQUIRED
    for key, kind in required.items():
        if key not in meta:
            raise BadInput(f"{path} lacks the key {key!r}; {fix}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            want = "a string" if kind is str else "a whole number"
            raise BadInput(f"{path}: {key} is {meta[key]!r}, not {want}; {fix}")
    if meta["dtype"] not in DTYPES:
        raise BadInput(
            f"{path}: dtype {meta['dtype']!r} is not uint16 or uint32, the token "
            f"formats this loader reads; {fix}"
        )
    capacity = np.iinfo(DTYPES[meta["dtype"]]).max + 1
    if not 0 < meta["vocab_size"] <= capacity:
        raise BadInput(
            f"{path}: vocab_size {meta['vocab_size']:,} does not fit {meta['dtype']} "
            f"(1 to {capacity:,}); {fix}"
        )
    if not 0 <= meta["eot_id"] < meta["vocab_size"]:
        raise BadInput(
            f"{path}: eot_id {meta['eot_id']:,} is outside the vocab [0, {meta['vocab_size']:,}); {fix}"
        )
    _check_vocabulary(meta, path, fix)
    if meta["tokenizer"] == HF_KIND:
        meta["files"] = _tokenizer_files(meta, data_dir, fix)
        try:  # the ids meta.json records (vocab, eot, boundaries) must be the files' own
            load_tokenizer(meta)
        except ValueError as e:
            raise BadInput(f"{path}: {e}") from None
    for key in ("max_token_id", "train_tokens", "val_tokens"):  # optional, but numbers if there
        if key in meta and (not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 0):
            raise BadInput(f"{path}: {key} is {meta[key]!r}, not a whole number >= 0; {fix}")
    return meta


def _check_vocabulary(meta: dict, path: str, fix: str):
    """The vocab_size and eot_id that the char alphabet (or GPT-2) fixes: a meta that says
    otherwise would train, and then fail when its tokenizer is rebuilt to sample."""
    if meta["tokenizer"] == "char":
        tok = get_tokenizer("char", meta["chars"]) if meta["chars"] else None
        if tok is None or tok.chars != meta["chars"]:
            raise BadInput(
                f"{path}: chars is not a sorted alphabet of distinct characters, as "
                f"prepare_data.py writes it; {fix}"
            )
        what, want = f"its {len(tok.chars)} chars", (tok.n_vocab, tok.eot_id)
    elif meta["tokenizer"] == "gpt2":
        what, want = "GPT-2's tokenizer", (GPT2_META["vocab_size"], GPT2_META["eot_id"])
    else:
        return  # another tiktoken encoding: its vocabulary may need a download, so it is checked at sampling
    if (meta["vocab_size"], meta["eot_id"]) != want:
        raise BadInput(
            f"{path}: vocab_size {meta['vocab_size']:,} and eot_id {meta['eot_id']:,} disagree "
            f"with {what} (vocab_size {want[0]:,}, eot_id {want[1]:,}); {fix}"
        )


def _tokenizer_files(meta: dict, data_dir: str, fix: str) -> dict:
    """{name: text} of the tokenizer files an hf dataset keeps beside meta.json, checked
    against the tokenizer.json digest meta.json records."""
    names = meta.get("tokenizer_files", [TOKENIZER_JSON])
    if TOKENIZER_JSON not in names or not isinstance(meta.get("tokenizer_sha256"), str):
        raise BadInput(f"{data_dir}/meta.json lacks tokenizer_files or tokenizer_sha256; {fix}")
    files = {}
    for name in names:
        path = os.path.join(data_dir, os.path.basename(name))
        try:
            with open(path, "rb") as fh:
                files[name] = fh.read()
        except OSError as e:
            raise BadInput(
                f"{path} is unreadable ({e.strerror}): the dataset lost its tokenizer; {fix}"
            ) from None
    digest = hashlib.sha256(files[TOKENIZER_JSON]).hexdigest()
    if digest != meta["tokenizer_sha256"]:
        raise BadInput(
            f"{data_dir}/{TOKENIZER_JSON} has sha256 {digest[:12]}..., not the "
            f"{meta['tokenizer_sha256'][:12]}... its token ids were made with; {fix}"
        )
    return {name: data.decode("utf-8") for name, data in files.items()}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain builtin values only: a class named in an untrusted pickle can run
    any code, and nanoGPT's meta.pkl (dicts of ints and strs) needs none."""

    ALLOWED = {"dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "bytes"}

    def find_class(self, module, name):
        if module == "builtins" and name in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a plain meta.pkl never does")


def read_meta_pkl(path: str, fix: str) -> dict:
    """nanoGPT's char-level meta.pkl ({vocab_size, itos, stoi}, sorted alphabet, no
    end-of-text id) as our char meta. The ids stay the same: our char tokenizer also
    numbers the sorted alphabet from 0, and adds eot as the next id, one id the data
    never holds (so vocab_size is nanoGPT's + 1). fix: what the error messages suggest."""
    try:
        with open(path, "rb") as fh:
            raw = _PlainUnpickler(fh).load()
    except Exception as e:  # untrusted bytes: any failure to parse means "not a meta.pkl"
        raise BadInput(
            f"{path} cannot be read as nanoGPT's meta.pkl ({type(e).__name__}: {e}); {fix}"
        ) from None
    itos = raw.get("itos") if isinstance(raw, dict) else None
    if not isinstance(itos, dict):
        raise BadInput(
            f"{path} has no 'itos' dict: only nanoGPT's character-level meta.pkl is understood; {fix}"
        )
    n = len(itos)
    values = [itos.get(i) for i in range(n)]
    if n == 0 or not all(isinstance(c, str) and len(c) == 1 for c in values) or sorted(set(values)) != values:
        raise BadInput(
            f"{path}: 'itos' is not the ids 0..{n - 1} of a sorted alphabet of single "
            f"characters, as nanoGPT's prepare.py writes it; {fix}"
        )
    chars = "".join(values)
    stoi = {c: i for i, c in enumerate(chars)}
    if raw.get("vocab_size", n) != n or raw.get("stoi", stoi) != stoi:
        raise BadInput(f"{path}: 'vocab_size' or 'stoi' disagrees with 'itos' ({n} characters); {fix}")
    return {"tokenizer": "char", "vocab_size": n + 1, "dtype": "uint16", "eot_id": n, "chars": chars}


def _meta_source(data_dir: str) -> str:
    """What the meta came from, for error messages."""
    for name in ("meta.json", "meta.pkl"):
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return f"the GPT-2 default ({data_dir} has no meta.json)"


def _prepare_hint(data_dir: str) -> str:
    name = os.path.basename(os.path.normpath(data_dir))
    if name == "shakespeare":
        return "python prepare_data.py"
    if name.startswith("shakespeare_"):  # the default corpus with another tokenizer
        tokenizer = name.split("_", 1)[1]
        tokenizer = re.sub(r"^bpe(\d+)$", r"bpe:\1", tokenizer)
        return f"python prepare_data.py --tokenizer={tokenizer} --name={name}"
    return f"python prepare_data.py --input=YOUR_FILES --name={name}"


# ---------------------------------------------------------------- ids against the model


def check_vocab(meta: dict, model_vocab: int, data_dir: str):
    """Refuse data whose vocab or largest id does not fit a model of model_vocab ids."""
    source = _meta_source(data_dir)
    if meta["vocab_size"] > model_vocab:
        raise BadInput(
            f"{source} says vocab_size {meta['vocab_size']:,} but the model's vocab is "
            f"{model_vocab:,}; the model must be built with the data's vocab"
        )
    if "max_token_id" in meta:
        if meta["max_token_id"] >= model_vocab:
            raise BadInput(
                f"{source} records max_token_id {meta['max_token_id']:,}, at or above the "
                f"model's vocab {model_vocab:,}: the data does not match its meta; "
                f"rerun `{_prepare_hint(data_dir)}`"
            )
        return
    dtype = DTYPES[meta["dtype"]]
    if np.iinfo(dtype).max < model_vocab:
        return  # every id this dtype can hold fits
    paths = [os.path.join(data_dir, f"{split}.bin") for split in SPLITS]
    whole = sum(os.path.getsize(p) for p in paths) <= FULL_SCAN_BYTES
    for path in paths:
        top = _largest_id(path, dtype, whole)
        if top >= model_vocab:
            raise BadInput(
                f"{path} holds token id {top:,}, at or above the model's vocab "
                f"{model_vocab:,} ({source}): the data does not match its meta; "
                f"rerun `{_prepare_hint(data_dir)}`"
            )
    if not whole:
        print(
            f"note: {source} records no max_token_id (prepared before it was recorded); checked "
            f"{SCAN_BLOCKS} blocks of each .bin, and every batch is checked as it is read",
            file=sys.stderr,
        )


def _largest_id(path: str, dtype: np.dtype, whole: bool) -> int:
    """The largest id in the file, or in SCAN_BLOCKS evenly spaced blocks of it."""
    n = os.path.getsize(path) // dtype.itemsize
    if whole:
        starts, count = range(0, n, 1 << 24), 1 << 24
    else:
        count = min(SCAN_BLOCK_TOKENS, n)
        starts = np.linspace(0, n - count, SCAN_BLOCKS).astype(np.int64).tolist()
    top = -1
    with open(path, "rb") as fh:  # plain reads: no mapping outlives the scan
        for start in starts:
            fh.seek(start * dtype.itemsize)
            block = np.fromfile(fh, dtype=dtype, count=min(count, n - start))
            if block.size:
                top = max(top, int(block.max()))
    return top


# ---------------------------------------------------------------- batches


class TokenWindows:
    """Reads (x, y) batches of block_size tokens from one split's .bin memmap. Every
    batch is checked against vocab_limit (default: the meta's vocab_size), the model's
    vocab, so an id it cannot embed is a clear error naming the file."""

    def __init__(
        self,
        data_dir: str,
        split: str,
        block_size: int,
        meta: dict,
        seed: int,
        vocab_limit: int | None = None,
    ):
        self.path = os.path.join(data_dir, f"{split}.bin")
        self.dtype = DTYPES[meta["dtype"]]
        self.n_tokens = os.path.getsize(self.path) // self.dtype.itemsize
        self.block_size = block_size
        self.split_id = SPLITS[split]
        self.seed = seed
        self.vocab_limit = meta["vocab_size"] if vocab_limit is None else vocab_limit
        self.fix = f"the data does not match {_meta_source(data_dir)}; rerun `{_prepare_hint(data_dir)}`"
        if self.n_tokens < block_size + 1:
            raise BadInput(
                f"{self.path} holds {self.n_tokens:,} tokens, fewer than block_size + 1 = "
                f"{block_size + 1:,}; lower --block_size or prepare more data"
            )

    def starts(self, step: int, global_batch: int, stream: int = 0) -> np.ndarray:
        """Window starts for every sequence of the global batch at this step. stream
        separates draws for different purposes (0: training, 1: evaluation)."""
        rng = np.random.default_rng([self.seed, self.split_id, stream, step])
        return rng.integers(0, self.n_tokens - self.block_size, size=global_batch)

    def batch(self, step: int, global_batch: int, first: int, count: int, device="cpu", stream: int = 0):
        """Sequences first..first+count-1 of the global batch of `step`, as int64 (x, y):
        views of one (count, block_size + 1) tensor on `device`. For a GPU the windows are
        read straight into pinned memory (the caching host allocator's blocks, reused once
        their copy is done) and sent with one non-blocking copy, so the next batch travels
        while the GPU computes."""
        starts = self.starts(step, global_batch, stream)[first : first + count]
        xy = _host_batch(len(starts), self.block_size, device)
        self.read_into(xy.numpy(), np.arange(len(starts)), starts)
        return _to_device(xy, device)

    def read_into(self, windows: np.ndarray, rows: np.ndarray, starts: np.ndarray):
        """windows[rows[i]] = the block_size + 1 tokens from starts[i], checked against vocab_limit."""
        # A fresh memmap per batch: a long-lived one keeps every page it ever touched
        # counted in resident memory, which grows without bound over a long run.
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        for row, s in zip(rows, starts):
            windows[row] = data[s : s + self.block_size + 1]
        del data
        read = windows[rows]
        if read.size and read.max() >= self.vocab_limit:  # one pass over a few thousand ids per batch
            row, col = np.unravel_index(read.argmax(), read.shape)
            raise BadInput(
                f"{self.path} holds token id {read[row, col]:,} at token "
                f"{starts[row] + col:,}, at or above the model's vocab "
                f"{self.vocab_limit:,}; {self.fix}"
            )


def _host_batch(count: int, block_size: int, device) -> torch.Tensor:
    """An empty (count, block_size + 1) int64 tensor, pinned when it is bound for a GPU."""
    cuda = torch.device(device).type == "cuda"
    return torch.empty((count, block_size + 1), dtype=torch.int64, pin_memory=cuda)


def _to_device(xy: torch.Tensor, device):
    if torch.device(device).type == "cuda":
        xy = xy.to(device, non_blocking=True)
    return xy[:, :-1], xy[:, 1:]


# ---------------------------------------------------------------- mixtures

MIX_TAG = 0x6D6978  # separates the draw of each sequence's dataset from the windows' draws


def check_data_mix(data_mix: dict) -> dict:
    """{data_dir: weight} -> {data_dir: weight / sum of weights}, refusing what cannot be a mixture."""
    if not isinstance(data_mix, dict) or not data_mix:
        raise BadInput(
            f"data_mix must name datasets and their weights, e.g. "
            f"{{'data/web': 0.7, 'data/code': 0.3}}; got {data_mix!r}"
        )
    seen = {}
    for data_dir, weight in data_mix.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise BadInput(
                f"data_mix weight of {data_dir!r} is {weight!r}; every weight must be a "
                f"positive number (they are relative: 7 and 3 mean 0.7 and 0.3)"
            )
        key = os.path.realpath(data_dir)
        if key in seen:
            raise BadInput(
                f"data_mix names {seen[key]!r} and {data_dir!r}, the same folder; name it once "
                f"with the sum of their weights"
            )
        seen[key] = data_dir
    total = sum(data_mix.values())
    return {data_dir: weight / total for data_dir, weight in data_mix.items()}


def read_mixture_metas(data_mix: dict) -> dict:
    """{data_dir: checked meta} of a mixture's datasets, which must share one tokenizer: an
    id must mean the same text in every one of them."""
    metas = {data_dir: read_meta(data_dir) for data_dir in check_data_mix(data_mix)}
    (first, ref), *rest = metas.items()
    for data_dir, meta in rest:
        if tokenizer_identity(meta) != tokenizer_identity(ref):
            raise BadInput(
                f"data_mix: {first} and {data_dir} have different tokenizers ("
                f"{describe_tokenizer(ref)} vs {describe_tokenizer(meta)}); prepare every "
                f"dataset of a mixture with the same --tokenizer"
            )
    return metas


class TokenMixture:
    """TokenWindows over several prepared datasets: each sequence of a step's global batch
    comes from dataset k with probability weight k, and its window is the one that
    dataset's TokenWindows draws for that sequence. Both draws are pure functions of
    (seed, split, step, index of the sequence), so resume, world-size independence and
    batch order hold as for one dataset, and one dataset gives exactly its TokenWindows'
    batches. metas: read_mixture_metas(data_mix)."""

    def __init__(
        self,
        data_mix: dict,
        split: str,
        block_size: int,
        metas: dict,
        seed: int,
        vocab_limit: int | None = None,
    ):
        weights = check_data_mix(data_mix)
        self.data_dirs = list(weights)
        self.weights = np.array([weights[d] for d in self.data_dirs])
        self.sources = [
            TokenWindows(d, split, block_size, metas[d], seed, vocab_limit) for d in self.data_dirs
        ]
        self.block_size, self.split_id, self.seed = block_size, SPLITS[split], seed
        self.n_tokens = sum(source.n_tokens for source in self.sources)
        self._bounds = np.cumsum(self.weights)
        self._bounds[-1] = 1.0  # a draw just under 1 must not fall past the last dataset

    def choices(self, step: int, global_batch: int, stream: int = 0) -> np.ndarray:
        """The dataset index of every sequence of the global batch at this step."""
        if len(self.sources) == 1:
            return np.zeros(global_batch, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.split_id, stream, step, MIX_TAG])
        return np.searchsorted(self._bounds, rng.random(global_batch), side="right")

    def batch(self, step: int, global_batch: int, first: int, count: int, device="cpu", stream: int = 0):
        """As TokenWindows.batch: sequences first..first+count-1 of the global batch of `step`."""
        which = self.choices(step, global_batch, stream)[first : first + count]
        xy = _host_batch(count, self.block_size, device)
        for k, source in enumerate(self.sources):
            rows = np.flatnonzero(which == k)
            if rows.size:
                starts = source.starts(step, global_batch, stream)[first + rows]
                source.read_into(xy.numpy(), rows, starts)
        return _to_device(xy, device)

    def mean(self, losses: dict) -> float:
        """The mixture's loss from each dataset's {data_dir: loss}: their weighted mean."""
        return float(sum(losses[d] * w for d, w in zip(self.data_dirs, self.weights)))

    def drawn(self, total_tokens: int) -> list:
        """For the planner and the report: each dataset's expected tokens and epochs of
        a run that trains on total_tokens."""
        return [
            {
                "data_dir": d,
                "weight": float(w),
                "tokens": total_tokens * float(w),
                "epochs": total_tokens * float(w) / source.n_tokens,
            }
            for d, w, source in zip(self.data_dirs, self.weights, self.sources)
        ]
