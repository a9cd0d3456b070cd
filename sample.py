"""Sample text from a trained checkpoint.

    python sample.py                                  # best checkpoint of the newest run
    python sample.py --checkpoint=checkpoints/shakespeare_cpu --prompt="ROMEO:"
    python sample.py --prompt=FILE:prompt.txt --temperature=0 --max_new_tokens=500

Generation is importable: `generate(model, idx, max_new_tokens, ...)` decodes a batch
with a KV cache (prefill the prompt once, then one token per step) or without one
(re-run the model on the whole window every step); greedy output is the same both ways.
"""

import argparse
import os
import sys
from dataclasses import replace

import torch

from errors import BadInput, run_cli
from model import KVCache
from parallel.devices import DTYPES, autocast, pick_device, pick_dtype
from storage.weights import build_model, check_tokenizer, find_and_load, tokenizer_meta
from text.tokenizer import load_tokenizer

# ---- sampling -------------------------------------------------------------------------


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Next token ids (B, 1) from last-position logits (B, V).
    temperature 0 is greedy; top_k keeps the k most likely ids; top_p keeps the smallest
    set of most likely ids whose probability sums to at least top_p (never empty)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature  # softmax in fp32 even under autocast
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the ones ranked above it already reach top_p; the most
        # likely token has nothing above it, so it always survives.
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _cache_dtype(model, device):
    # Under autocast the keys and values come out of the Linear layers in the autocast
    # dtype; a cache in that dtype avoids a cast per layer per step.
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


@torch.inference_mode()
def generate(
    model,
    idx,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    top_p=None,
    use_cache=True,
    generator=None,
    eot_id=None,
    on_token=None,
):
    """Append up to max_new_tokens sampled ids to each row of idx (B, T) and return
    (B, T + n_new). The model conditions on at most block_size tokens: longer prompts are
    cropped to their last block_size tokens (the returned tensor keeps the whole prompt).

    eot_id: an id, or a sequence of ids (tokenizer.stop_ids), that finishes a row; its
    later positions are filled with the first of them, and generation stops early once
    every row is finished.
    on_token(tokens): called after each step with the new ids, shape (B,).

    Within the context both paths see exactly the same tokens at the same positions,
    so their logits agree (up to float rounding) and greedy outputs are identical.
    Past the context they differ by design: positions are learned embeddings, so cached
    keys cannot slide along. The uncached path re-runs a sliding window of the last
    block_size tokens each step; the cached path, when its cache is full, re-encodes the
    last block_size // 2 tokens and carries on, so it conditions on a window of between
    block_size // 2 and block_size tokens. Halving keeps the costly re-encode to once per
    block_size // 2 new tokens instead of once per token.
    """
    model.eval()
    block = model.config.block_size
    keep = max(1, block // 2)
    B = idx.size(0)
    out = idx
    cache = None
    if use_cache:
        # no longer than this call can fill: a 128K-context model's full cache is gigabytes
        need = min(block, min(idx.size(1), block) + max_new_tokens)
        cache = KVCache(
            replace(model.config, block_size=need), B, idx.device, _cache_dtype(model, idx.device)
        )
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    if eot_id is not None:
        stop = torch.tensor([eot_id] if isinstance(eot_id, int) else list(eot_id), device=idx.device)
    logits = None
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model.next_token_logits(out[:, -block:])
        elif logits is None:  # prefill the prompt once
            logits = model.next_token_logits(out[:, -block:], cache)
        elif cache.pos < cache.capacity:  # only the newest token is new to the cache
            logits = model.next_token_logits(out[:, -1:], cache)
        else:  # cache full: re-encode the tail at positions 0..keep-1
            cache.reset()
            logits = model.next_token_logits(out[:, -keep:], cache)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eot_id is not None:
            nxt = nxt.masked_fill(done[:, None], int(stop[0]))
            done |= torch.isin(nxt[:, 0], stop)
        out = torch.cat([out, nxt], dim=1)
        if on_token is not None:
            on_token(nxt[:, 0])
        if eot_id is not None and bool(done.all()):
            break
    return out


class IncrementalDecoder:
    """Turns a stream of ids into a stream of text. Decoding ids one by one would break
    characters that span tokens (a BPE byte piece of a multi-byte character), so decode
    the whole sequence each time and hand out only the new, settled suffix."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = []
        self.shown = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # probably half a character: wait for the rest
            return ""
        return self._advance(text)

    def flush(self) -> str:
        return self._advance(self.tokenizer.decode(self.ids))

    def _advance(self, text: str) -> str:
        new = text[len(self.shown) :] if text.startswith(self.shown) else text
        self.shown = text
        return new


# ---- command line ---------------------------------------------------------------------


def _top_k(value: str):
    if value.lower() == "none":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or none, got {value!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Sample text from a trained GPT checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file or run folder, a Hugging Face GPT-2, Llama or Qwen2 folder, or a nanoGPT "
        "ckpt.pt (default: best of the newest run in checkpoints/)",
    )
    p.add_argument(
        "--prompt",
        default=None,
        help="start text, or FILE:path to read it from a file (default: end-of-text token)",
    )
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top_k", type=_top_k, default=200, help="keep the k most likely ids (none: all)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--stop_at_eot", action="store_true", help="end a sample at the end-of-text token")
    p.add_argument("--no_cache", action="store_true", help="disable the KV cache (slower)")
    p.add_argument("--out_dir", default="checkpoints", help="where to look for runs without --checkpoint")
    args = p.parse_args(argv)
    # Fail before the (slow) checkpoint load, with the fix in the message.
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0 (0 is greedy), got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        p.error(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        p.error(f"--top_k must be >= 1 (or none), got {args.top_k}")
    if args.num_samples < 1:
        p.error(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.max_new_tokens < 0:
        p.error(f"--max_new_tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt is not None and args.prompt.startswith("FILE:"):
        path = args.prompt[len("FILE:") :]
        if not os.path.isfile(path):
            p.error(f"prompt file {path!r} does not exist")
        with open(path, encoding="utf-8") as fh:
            args.prompt = fh.read()
    return args


def main(argv=None):
    """Print num_samples samples; return their texts (prompt + continuation)."""
    args = parse_args(argv)
    device = pick_device(args.device)
    path, ckpt = find_and_load(args.checkpoint, args.out_dir)
    tok = load_tokenizer(tokenizer_meta(ckpt))
    model = build_model(ckpt, device)
    step = ckpt.get("step")
    check_tokenizer(model.config, tok)
    del ckpt  # the optimizer state can be as large as the model again
    print(
        f"sampling from {path} (step {step}), {model.num_params() / 1e6:.2f}M params, "
        f"{tok.name} tokenizer, {device}",
        file=sys.stderr,
    )

    if args.prompt is None:
        # unconditional: start as a new document would (after an eot, or with Llama 3's bos)
        prompt_ids = list(tok.doc_prefix) or [tok.eot_id]
    else:
        prompt_ids = tok.encode(args.prompt)
        if not prompt_ids:
            raise BadInput("the prompt encodes to no tokens; leave --prompt out to sample unconditionally")
        prompt_ids = [*tok.doc_prefix, *prompt_ids]  # a prompt starts a document, as in training
    if len(prompt_ids) > model.config.block_size:
        print(
            f"prompt is {len(prompt_ids)} tokens; the model sees its last {model.config.block_size}",
            file=sys.stderr,
        )
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    ctx = autocast(device, pick_dtype(args.dtype, device))

    texts = []
    for i in range(args.num_samples):
        if i:
            print("\n" + "-" * 40, flush=True)
        head = args.prompt or ""
        print(head, end="", flush=True)
        dec = IncrementalDecoder(tok)
        eot = tok.stop_ids if args.stop_at_eot else None

        def show(t, dec=dec, eot=eot or ()):
            if int(t[0]) not in eot:  # the stopping token itself is not part of the text
                print(dec.push(int(t[0])), end="", flush=True)

        with ctx:
            generate(
                model,
                idx,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                args.top_p,
                use_cache=not args.no_cache,
                generator=generator,
                eot_id=eot,
                on_token=show,
            )
        print(dec.flush(), flush=True)
        texts.append(head + dec.shown)
    return texts


if __name__ == "__main__":
    run_cli(main)
