"""A byte-level BPE trained on a corpus (prepare_data.py --tokenizer=bpe:VOCAB), for a
language or domain where GPT-2's vocabulary spends too many tokens per byte.

GPT-2's recipe through the `tokenizers` library: GPT-2's pre-tokenizer regex over bytes
shown as printable characters (ByteLevel), so any text encodes and decodes exactly with
no unknown token; merges learnt by BpeTrainer; "<|endoftext|>" as id 0, written after
each document (tokenizer_config.json's eos_token, the hf kind's convention when the
tokenizer adds nothing itself).
"""

import json

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from errors import BadInput
from text.tokenizer import EOT_TEXT, TOKENIZER_JSON, HFTokenizer

BPE_PREFIX = "bpe:"
MIN_VOCAB = 256 + 1  # every byte, and the end-of-text id
MAX_VOCAB = 1 << 24  # far past any useful vocabulary; ids must also fit uint32


def parse_bpe_vocab(spec: str) -> int:
    """VOCAB of "bpe:VOCAB", checked."""
    value = spec[len(BPE_PREFIX) :]
    if not value.isdigit() or not MIN_VOCAB <= int(value) <= MAX_VOCAB:
        raise BadInput(
            f"--tokenizer={spec}: VOCAB must be a whole number from {MIN_VOCAB} (the 256 bytes "
            f"and end-of-text) to {MAX_VOCAB:,}, e.g. bpe:32000"
        )
    return int(value)


def train_bpe(texts, vocab_size: int, source: str) -> HFTokenizer:
    """A byte-level BPE of at most vocab_size ids (fewer when the texts have fewer distinct
    merges) learnt from the iterable `texts`; source: where its files will live."""
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,  # the caller's progress bar counts the bytes read
    )
    tk.train_from_iterator(texts, trainer)
    config = {  # what transformers' AutoTokenizer reads beside tokenizer.json
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOT_TEXT,
        "clean_up_tokenization_spaces": False,
    }
    files = {TOKENIZER_JSON: tk.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
    return HFTokenizer(files, source=source)
