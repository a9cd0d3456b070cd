"""Peak memory of importing a Hugging Face Llama folder (storage/hf_llama.py): a folder of
Llama-3.2-1B's published shape (config.json as published, random bf16 weights in one
model.safetensors, a 128,256-token tokenizer.json) is written, then a fresh process imports it
(weights.load_weights) and builds the model from it (weights.build_model, as sample.py and
evaluate.py do), and reports its peak RSS (ru_maxrss) against the weights' own size.

    PYTHONPATH=. python3 bench/bench_import.py [--folder=/tmp/llama-3.2-1b-shape]

The imported weights live in fp32 (the training master dtype), twice the bf16 file: the
ratio that matters is the peak against the fp32 weights. Needs about 8 GB of free RAM and
2.5 GB of disk; the folder is kept for reruns.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# Llama-3.2-1B's published config.json (huggingface.co/meta-llama/Llama-3.2-1B), as shipped.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}


def write_folder(folder: str):
    """config.json, a word-level tokenizer.json of the model's vocabulary, and random bf16
    weights under Llama's names (hf_llama.weight_map gives names and shapes)."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    from storage.hf_llama import llama_config, weight_map
    from storage.interop import model_shapes

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(LLAMA_3_2_1B, fh, indent=2)
    vocab = LLAMA_3_2_1B["vocab_size"]
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"bos_token": "w128000", "eos_token": "w128001"}, fh)
    cfg = llama_config(LLAMA_3_2_1B, "config.json")
    shapes = model_shapes(cfg)
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for ours, parts in weight_map(cfg).items():
        for theirs, rows in parts:
            shape = (rows, *shapes[ours][1:])
            tensors[theirs] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def measure(folder: str) -> dict:
    """In this (fresh) process: import the folder, build the model, report the peaks."""
    import torch

    from storage.weights import build_model, load_weights

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    base = peak()
    start = time.perf_counter()
    ckpt = load_weights(folder)
    after_import = peak()
    model = build_model(ckpt, "cpu")
    seconds = time.perf_counter() - start
    fp32 = sum(p.numel() * 4 for p in model.state_dict().values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return dict(base=base, after_import=after_import, peak=peak(), fp32=fp32, seconds=seconds)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--folder", default="/tmp/llama-3.2-1b-shape", help="where the 1B-shaped folder is (made if missing)"
    )
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the fresh child process
    p.add_argument("--write", action="store_true", help=argparse.SUPPRESS)  # the child that writes the folder
    args = p.parse_args()
    if args.write:
        write_folder(args.folder)
        return
    if args.measure:
        print(json.dumps(measure(args.folder)))
        return
    if not os.path.isfile(os.path.join(args.folder, "model.safetensors")):
        print(f"writing {args.folder} (random bf16 weights) ...", file=sys.stderr)
        # in a child process, so that its memory is not the measurement's
        subprocess.run([sys.executable, __file__, f"--folder={args.folder}", "--write"], check=True)
    out = subprocess.run(
        [sys.executable, __file__, f"--folder={args.folder}", "--measure"],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    file_bytes = os.path.getsize(os.path.join(args.folder, "model.safetensors"))
    gib = 2**30
    print(
        f"Llama-3.2-1B shape, bf16 model.safetensors {file_bytes / gib:.2f} GiB; fp32 weights {r['fp32'] / gib:.2f} GiB"
    )
    print(f"process before import (python, torch, project): {r['base'] / gib:.2f} GiB")
    print(
        f"peak RSS after load_weights: {r['after_import'] / gib:.2f} GiB; after build_model: {r['peak'] / gib:.2f} GiB"
    )
    print(
        f"peak / fp32 weights: {r['peak'] / r['fp32']:.2f}x; (peak - before) / fp32 weights: "
        f"{(r['peak'] - r['base']) / r['fp32']:.2f}x; import + build {r['seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
