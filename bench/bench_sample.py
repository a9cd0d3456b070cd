"""KV-cache speedup for generation: greedy decode with and without the cache.

    python bench/bench_sample.py                       # 6 x 384, context 1,024, GPT-2 vocab
    python bench/bench_sample.py --preset=gpt2-124m    # the real shape (slow on CPU)

Random weights are enough: the work per token does not depend on what was learned.
The goal is a >= 5x speedup for 500 new tokens on CPU; both outputs must be identical.
"""

import argparse
import time

import torch

from model import GPT, PRESETS, GPTConfig, preset_config
from sample import generate


def timed_generate(model, idx, new_tokens, use_cache):
    t0 = time.perf_counter()
    out = generate(model, idx, new_tokens, temperature=0.0, use_cache=use_cache)
    return out, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset", default=None, choices=sorted(PRESETS), help="model shape (overrides the fields below)"
    )
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--vocab_size", type=int, default=50257)
    p.add_argument("--prompt_tokens", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)

    shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size)
    model_cfg = (
        preset_config(args.preset, data_vocab=args.vocab_size)  # a Llama preset keeps its own vocab
        if args.preset
        else GPTConfig(vocab_size=args.vocab_size, **shape)
    )
    if args.preset:
        shape = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    model = GPT(model_cfg).to(args.device).eval()
    # A short random prompt: any ids do, and it keeps the bench free of tokenizer files.
    idx = torch.randint(0, args.vocab_size, (1, args.prompt_tokens), device=args.device)
    print(
        f"model {shape}, vocab {args.vocab_size}, {model.num_params() / 1e6:.1f}M params; "
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, "
        f"{args.device}, {torch.get_num_threads()} threads"
    )

    generate(model, idx, 4, temperature=0.0)  # warm-up: first-call allocations and kernels
    outs, secs = {}, {}
    for name, use_cache in (("with cache", True), ("no cache", False)):
        outs[name], secs[name] = timed_generate(model, idx, args.new_tokens, use_cache)
        print(f"{name:>10}: {secs[name]:7.2f} s  {args.new_tokens / secs[name]:8.1f} new tokens/s")
    assert torch.equal(outs["with cache"], outs["no cache"]), "cached and uncached greedy outputs differ"
    print(f"   speedup: {secs['no cache'] / secs['with cache']:.1f}x (outputs identical)")


if __name__ == "__main__":
    main()
