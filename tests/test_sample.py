"""Generation (KV cache vs none, sampling filters, seeding) and the sample.py command line."""

import json
import os

import pytest
import torch
from conftest import tokenizer_folder

from model import GPT, GPTConfig, KVCache
from sample import IncrementalDecoder, generate, main, sample_next
from storage.checkpoint import save_checkpoint
from storage.weights import resolve_checkpoint
from text.tokenizer import EOT_TEXT, load_tokenizer, tokenizer_meta_from_folder

CHARS = "".join(sorted("\n !',.:;?abcdefghijklmnopqrstuvwxyzAB"))  # 37; eot is id 37
VOCAB = len(CHARS) + 1  # not a multiple of 64, so the embedding has padding rows
BLOCK = 16


# A Llama shape: rotary positions (which the cache must continue), one k/v head, untied head.
LLAMA = dict(norm="rmsnorm", mlp="swiglu", bias=False, rope_theta=10000.0, n_kv_head=1, tie_embeddings=False)
SHAPES = pytest.mark.parametrize("shape", [{}, LLAMA], ids=["gpt2", "llama"])


def tiny_model(seed=0, vocab=VOCAB, block=BLOCK, **shape):
    """A random model with large, varied logits: the default init is so flat that greedy
    decoding collapses to one repeated token, which would hide cache bugs."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32, **shape))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
        model.wte.weight.div_(model.wte.weight.norm(dim=1, keepdim=True))
    return model.eval()


def prompt(batch=3, length=5, seed=1, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


# ---- KV cache ---------------------------------------------------------------------------


def test_prefill_and_step_logits_match_full_forward():
    model, idx = tiny_model(), prompt(length=12)
    cache = KVCache(model.config, idx.size(0), "cpu", torch.float32)
    with torch.no_grad():
        got = model.next_token_logits(idx[:, :6], cache)
        want = model.next_token_logits(idx[:, :6])
        torch.testing.assert_close(got, want)
        for t in range(6, 12):  # then one token at a time, each against the full prefix
            got = model.next_token_logits(idx[:, t : t + 1], cache)
            want = model.next_token_logits(idx[:, : t + 1])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@SHAPES
def test_greedy_with_cache_equals_without_within_context(shape):
    model, idx = tiny_model(**shape), prompt()
    new = BLOCK - idx.size(1) + 1  # the last step conditions on a full block
    cached = generate(model, idx, new, temperature=0.0, use_cache=True)
    plain = generate(model, idx, new, temperature=0.0, use_cache=False)
    assert cached.shape == (3, idx.size(1) + new)
    assert torch.equal(cached, plain)
    assert torch.equal(cached[:, : idx.size(1)], idx)
    assert len(set(cached[:, idx.size(1) :].flatten().tolist())) > 3  # not one repeated token


def reference_windowed_greedy(model, idx, new):
    """The documented cached behaviour past the context, step by step without a cache:
    the window grows to block_size, then restarts from the last block_size // 2 tokens."""
    block, keep = model.config.block_size, model.config.block_size // 2
    seq, start = idx[:, -block:], 0
    with torch.no_grad():
        for _ in range(new):
            if seq.size(1) - start > block:
                start = seq.size(1) - keep
            logits = model.next_token_logits(seq[:, start:])
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq


@SHAPES
def test_generation_past_context(shape):
    model, idx = tiny_model(**shape), prompt()
    cached = generate(model, idx, 40, temperature=0.0, use_cache=True)
    plain = generate(model, idx, 40, temperature=0.0, use_cache=False)
    assert cached.shape == plain.shape == (3, 45)
    assert int(cached.max()) < VOCAB
    # identical while the whole sequence fits, then each path follows its own window
    assert torch.equal(cached[:, : BLOCK + 1], plain[:, : BLOCK + 1])
    assert torch.equal(cached, reference_windowed_greedy(model, idx, 40))


def test_long_prompt_is_cropped_to_block_size():
    model, idx = tiny_model(), prompt(batch=2, length=30)
    for use_cache in (True, False):
        out = generate(model, idx, 5, temperature=0.0, use_cache=use_cache)
        assert out.shape == (2, 35) and torch.equal(out[:, :30], idx)
        short = generate(model, idx[:, -BLOCK:], 5, temperature=0.0, use_cache=use_cache)
        assert torch.equal(out[:, 30:], short[:, BLOCK:])


def test_eot_stops_rows_and_pads_finished_ones():
    model, idx = tiny_model(), prompt()
    free = generate(model, idx, 10, temperature=0.0)[:, 5:]
    eot = int(free[0, 2])  # row 0 produces it by its third step
    out = generate(model, idx, 10, temperature=0.0, eot_id=eot)[:, 5:]
    for row in range(3):
        hits = (free[row] == eot).nonzero()
        if len(hits) == 0:
            assert torch.equal(out[row], free[row][: out.size(1)])
        else:
            first = int(hits[0])
            assert torch.equal(out[row, : first + 1], free[row, : first + 1])
            assert (out[row, first:] == eot).all()
    first = int((free[0] == eot).nonzero()[0])
    one = generate(model, idx[:1], 10, temperature=0.0, eot_id=eot)
    assert one.size(1) == 5 + first + 1  # a lone row stops right after its end-of-text


def test_on_token_sees_every_new_token():
    model, idx = tiny_model(), prompt()
    seen = []
    out = generate(model, idx, 7, temperature=0.0, on_token=lambda t: seen.append(t.clone()))
    assert torch.equal(torch.stack(seen, dim=1), out[:, 5:])


# ---- sampling -------------------------------------------------------------------------


def test_padding_ids_are_never_sampled():
    model = tiny_model()
    with torch.no_grad():  # if padding columns leaked into the logits they would win
        model.wte.weight[VOCAB:] = 10.0
    gen = torch.Generator().manual_seed(0)
    out = generate(model, prompt(batch=8), 150, temperature=1.5, top_k=None, generator=gen)
    assert int(out.max()) < VOCAB
    assert len(set(out[:, 5:].flatten().tolist())) > VOCAB // 2  # it really samples widely


def test_top_k_1_and_tiny_top_p_are_greedy():
    model, idx = tiny_model(), prompt()
    greedy = generate(model, idx, 12, temperature=0.0)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, idx, 12, temperature=1.0, top_k=1, generator=gen), greedy)
    assert torch.equal(generate(model, idx, 12, temperature=1.0, top_p=1e-6, generator=gen), greedy)
    sampled = generate(model, idx, 12, temperature=1.0, generator=gen)
    assert not torch.equal(sampled, greedy)  # the filters, not luck, made those greedy


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    draw = lambda **kw: set(sample_next(logits, 1.0, generator=gen, **kw).flatten().tolist())  # noqa: E731
    assert draw(top_k=2) == {0, 1}
    assert draw(top_p=0.5) == {0}  # 0.5 alone reaches 0.5
    assert draw(top_p=0.6) == {0, 1}  # smallest set reaching 0.6
    assert draw(top_p=0.8) == {0, 1}
    assert draw(top_p=0.81) == {0, 1, 2}
    assert draw(top_p=1.0) == {0, 1, 2, 3}
    assert draw(top_k=3, top_p=0.99) == {0, 1, 2}


def test_seeded_sampling_is_reproducible():
    model, idx = tiny_model(), prompt()
    run = lambda seed, cache: generate(  # noqa: E731
        model,
        idx,
        12,
        temperature=1.0,
        top_k=20,
        top_p=0.95,
        use_cache=cache,
        generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(run(7, True), run(7, True))
    assert torch.equal(run(7, True), run(7, False))  # same logits, same random draws
    assert not torch.equal(run(7, True), run(8, True))


def test_incremental_decoder_keeps_multibyte_characters_whole():
    tok = load_tokenizer({"tokenizer": "gpt2"})
    text = "naïve café 🙂🚀 日本語 done"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some characters span tokens
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


# ---- command line and checkpoints -----------------------------------------------------


def char_meta():
    return {"tokenizer": "char", "chars": CHARS, "vocab_size": VOCAB, "eot_id": VOCAB - 1, "dtype": "uint16"}


def save_run(run_dir, name="checkpoint_step_10.pt", step=10, tokenizer=True, data_dir="data/none", seed=0):
    model = tiny_model(seed)
    path = os.path.join(run_dir, name)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_config": vars(model.config),
            "config": {"data_dir": str(data_dir)},
            "step": step,
            "tokenizer": char_meta() if tokenizer else None,
        },
        path,
    )
    return path


def test_main_prints_samples(tmp_path, capsys):
    run = tmp_path / "run"
    save_run(run)
    args = ["--checkpoint", str(run), "--prompt", "to be", "--num_samples", "2"]
    args += ["--max_new_tokens", "12", "--device", "cpu", "--seed", "3"]
    texts = main(args)
    out = capsys.readouterr().out
    assert len(texts) == 2
    for t in texts:
        assert t.startswith("to be") and len(t) > len("to be")
        assert set(t.replace(EOT_TEXT, "")) <= set(CHARS)
        assert t in out
    assert "-" * 40 in out
    again = main(args)
    assert again == texts


def test_main_greedy_same_with_and_without_cache(tmp_path, capsys):
    run = tmp_path / "run"
    save_run(run)
    args = [
        "--checkpoint",
        str(run),
        "--num_samples",
        "1",
        "--max_new_tokens",
        "16",
        "--temperature",
        "0",
        "--device",
        "cpu",
    ]
    cached = main(args)
    plain = main(args + ["--no_cache"])
    assert cached == plain and len(cached[0]) > 5  # 1 + 16 tokens: all within the context


def test_prompt_from_file_and_stop_at_eot(tmp_path, capsys):
    run = tmp_path / "run"
    save_run(run)
    pfile = tmp_path / "prompt.txt"
    pfile.write_text("hello")
    texts = main(
        [
            "--checkpoint",
            str(run),
            "--prompt",
            f"FILE:{pfile}",
            "--num_samples",
            "1",
            "--max_new_tokens",
            "40",
            "--device",
            "cpu",
            "--stop_at_eot",
            "--temperature",
            "1.5",
            "--top_k",
            "none",
        ]
    )
    assert texts[0].startswith("hello")


def test_run_dir_resolution_prefers_best(tmp_path, capsys):
    out_dir = tmp_path / "checkpoints"
    old, new = out_dir / "old", out_dir / "new"
    save_run(old, "best_model.pt")
    save_run(new, "checkpoint_step_5.pt", step=5)
    save_run(new, "checkpoint_step_20.pt", step=20)  # numeric, not lexical, order
    os.utime(old / "best_model.pt", (1, 1))  # old run is older
    assert resolve_checkpoint(str(new)) == str(new / "checkpoint_step_20.pt")
    assert resolve_checkpoint(None, str(out_dir)) == str(new / "checkpoint_step_20.pt")
    best = save_run(new, "best_model.pt", step=15)
    assert resolve_checkpoint(str(new)) == best
    assert resolve_checkpoint(None, str(out_dir)) == best
    main(["--out_dir", str(out_dir), "--num_samples", "1", "--max_new_tokens", "3", "--device", "cpu"])
    assert "best_model.pt (step 15)" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no run with checkpoints"):
        resolve_checkpoint(None, str(tmp_path / "empty"))
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(FileNotFoundError, match="no best_model.pt"):
        resolve_checkpoint(str(tmp_path / "emptyrun"))


def test_tokenizer_falls_back_to_data_dir_meta(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "run"
    save_run(run, tokenizer=False, data_dir=data)
    args = ["--checkpoint", str(run), "--num_samples", "1", "--max_new_tokens", "5", "--device", "cpu"]
    with pytest.raises(ValueError, match="gpt2 tokenizer has 50257: the tokenizer does not belong"):
        main(args)  # without meta.json the folder is taken as GPT-2 ids, which this model cannot embed
    assert "assuming GPT-2 token ids" in capsys.readouterr().err
    (data / "meta.json").write_text(json.dumps(char_meta()))
    assert len(main(args)) == 1
    assert "char tokenizer" in capsys.readouterr().err


def test_a_checkpoint_with_nan_weights_is_refused_with_a_sentence(tmp_path):
    path = save_run(tmp_path / "run")
    saved = torch.load(path, weights_only=True)
    saved["model"]["h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_checkpoint({k: v for k, v in saved.items() if k != "digest"}, path)  # saved so: its digest agrees
    with pytest.raises(
        ValueError, match=r"NaN or inf weights \(h\.0\.mlp\.c_fc\.weight\).*earlier checkpoint"
    ):
        main(["--checkpoint", path, "--device", "cpu", "--num_samples", "1"])


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint file"):
        main(["--checkpoint", str(junk), "--device", "cpu"])
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a checkpoint written by train.py"):
        main(["--checkpoint", str(plain), "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        main(["--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--temperature", "-0.1"], "--temperature must be >= 0"),
        (["--top_p", "0"], "--top_p must be in"),
        (["--top_p", "1.5"], "--top_p must be in"),
        (["--top_k", "0"], "--top_k must be >= 1"),
        (["--prompt", "FILE:/no/such/prompt.txt"], "does not exist"),
    ],
)
def test_bad_arguments_fail_early(bad, message, capsys):
    with pytest.raises(SystemExit):
        main(bad + ["--checkpoint", "/no/such/checkpoint.pt"])
    assert message in capsys.readouterr().err


def test_empty_prompt_is_an_error(tmp_path):
    run = tmp_path / "run"
    save_run(run)
    with pytest.raises(ValueError, match="encodes to no tokens"):
        main(["--checkpoint", str(run), "--prompt", "", "--device", "cpu"])


def test_bfloat16_autocast_runs_with_cache(tmp_path, capsys):
    run = tmp_path / "run"
    save_run(run)
    args = [
        "--checkpoint",
        str(run),
        "--num_samples",
        "1",
        "--max_new_tokens",
        "10",
        "--temperature",
        "0",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--prompt",
        "ab",
    ]
    cached, plain = main(args), main(args + ["--no_cache"])
    assert cached == plain and len(cached[0]) > 2


def test_tokenizer_smaller_than_model_is_an_error(tmp_path):
    run = tmp_path / "run"
    path = save_run(run)
    ckpt = torch.load(path, weights_only=True)
    ckpt["tokenizer"] = {"tokenizer": "char", "chars": "abc"}  # 4 ids for a 38-id model
    save_checkpoint({k: v for k, v in ckpt.items() if k != "digest"}, path)
    with pytest.raises(ValueError, match="the model has 38 ids but the char tokenizer has 4"):
        main(["--checkpoint", str(run), "--device", "cpu"])


# ---- a model folder's tokenizer (hf) ------------------------------------------------------


def test_any_of_several_stop_ids_ends_a_row():
    model, idx = tiny_model(), prompt(batch=1)
    free = generate(model, idx, 10, temperature=0.0)[0, 5:].tolist()
    first, second = free[3], next(i for i in free if i != free[3])
    out = generate(model, idx, 10, temperature=0.0, eot_id=(first, second))[0, 5:].tolist()
    stop = min(free.index(first), free.index(second))
    assert out == free[: stop + 1]  # ends at whichever comes first


def test_incremental_decoder_with_a_byte_level_bpe(tmp_path):
    tok = load_tokenizer(tokenizer_meta_from_folder(tokenizer_folder(tmp_path / "qwen", "qwen2.5")))
    text = "Speak, naïve 🙂 日本語."  # trained on English only: these characters are byte tokens
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_a_llama3_tokenizer_starts_prompts_with_bos_and_stops_at_bos_or_eos(tmp_path, monkeypatch, capsys):
    import sample

    meta = tokenizer_meta_from_folder(tokenizer_folder(tmp_path / "llama", "llama3"))
    tok = load_tokenizer(meta)
    bos, eos = tok.doc_prefix[0], tok.eot_id
    run = tmp_path / "run"
    model = tiny_model(vocab=tok.n_vocab + 30)  # padded past its tokens, as Qwen2.5's embedding
    save_checkpoint(
        {"model": model.state_dict(), "model_config": vars(model.config), "step": 1, "tokenizer": meta},
        os.path.join(run, "checkpoint_step_1.pt"),
    )
    seen = []

    def spy(model, idx, *args, **kw):
        seen.append((idx[0].tolist(), kw["eot_id"]))
        return generate(model, idx, *args, **kw)

    monkeypatch.setattr(sample, "generate", spy)
    base = ["--checkpoint", str(run), "--device", "cpu", "--max_new_tokens", "8", "--stop_at_eot"]
    texts = main(base + ["--prompt", "Speak, speak."])
    assert seen[-1] == ([bos, *tok.encode("Speak, speak.")], (eos, bos))
    assert texts[0].startswith("Speak, speak.") and "<|begin_of_text|>" not in texts[0]
    main(base)
    assert seen[-1][0] == [bos]  # unconditional: a document's start
