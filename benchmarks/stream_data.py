"""Streaming data prep and the streaming pre-training reader, on generated corpora.

    python benchmarks/stream_data.py --sizes 100 1000          # MB of JSONL text
    python benchmarks/stream_data.py --sizes 100 --workers 1 2 --pretrain-steps 60

For each size it generates a deterministic corpus (JSONL files of ~32 MB of word salad drawn
by a seeded RNG from a 5,000-word vocabulary), then, each in a fresh subprocess (a fresh Ray,
so peak RSS is that run's own):

* data prep (``plan_units`` -> scan -> tokenizer on the bounded sample -> dedup -> pack) with
  each ``--workers`` count of Ray Data workers: tokens/s over scan + pack, the driver's and the
  largest data worker's peak RSS;
* one pre-training process (the tiny preset's model and batch, bare torch, no Ray): the
  streaming ``BlockReader`` + ``BlockSampler`` against the in-memory reader it replaced (the
  whole split as an int64 tensor), steps interleaved so both see the same machine load, and the
  streaming process's peak RSS.

Beside the 1 vs 2 worker ratio it prints this machine's ceiling for it: the same fast-tokenizer
work (the first documents of the corpus, in batches, no Ray, no I/O) in one bare process, then
in two at once. Two vCPUs of a virtual machine do not give 2x (shared caches, memory bandwidth,
the host's scheduling): no orchestration can beat that ratio.

Ratios are printed side by side; nothing is asserted. The machine's 1-minute load is printed
too: on a shared machine a load above the core count means the figures are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILE_MB = 32


def generate(folder: Path, size_mb: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(5000)]
    weights = 1 / np.arange(1, 5001)
    weights /= weights.sum()  # Zipf-like, as text is
    folder.mkdir(parents=True, exist_ok=True)
    target = size_mb * 1_000_000
    written, index = 0, 0
    while written < target:
        chunk = min(FILE_MB * 1_000_000, target - written)
        lines, size = [], 0
        while size < chunk:
            n = int(rng.integers(40, 400))
            text = " ".join(words[i] for i in rng.choice(5000, size=n, p=weights)) + "."
            line = json.dumps({"text": text}) + "\n"
            lines.append(line)
            size += len(line)
        (folder / f"part-{index:04d}.jsonl").write_text("".join(lines))
        written += size
        index += 1


def prep(corpus: str, out: str, workers: int) -> dict:
    """One data prep of ``corpus`` (the stage's corpus path, without MLflow/KFP)."""
    import ray

    from components.common.config import load_config
    from components.common.config.data import DataSource
    from components.data_prep.sources import plan_units
    from components.data_prep.token_shards import pack, peak_rss_mb, scan
    from components.data_prep.tokenizer import train_tokenizer

    cfg = load_config("tiny", [])
    # 1 worker runs on Ray Data too (concurrency 1), so the two counts differ only in workers
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    units = plan_units([DataSource(uri=corpus)], int(cfg.data.unit_mb * 1_000_000))
    started = time.perf_counter()
    scans, sample = scan(units, f"{out}/work", 0, cfg.data.tokenizer_sample_docs, 0.01, workers, True)
    scan_s = time.perf_counter() - started
    tokenizer = train_tokenizer(sample, cfg.data.vocab_size, cfg.data.tokenizer_min_frequency)
    t0 = time.perf_counter()
    packed = pack(units, f"{out}/work", f"{out}/pretrain", scans, tokenizer.backend_tokenizer.to_str(),
                  tokenizer.eos_token_id, len(tokenizer), cfg.model.max_seq_len, cfg.data.shard_blocks, 0.01,
                  workers, True)
    pack_s = time.perf_counter() - t0
    tokens = packed.train.num_tokens + packed.heldout.num_tokens
    manifest = {"pretrain": {"train": packed.train.to_json()}}
    Path(out, "manifest.json").write_text(json.dumps(manifest))
    tokenizer.save_pretrained(f"{out}/tokenizer")
    return {"units": len(units), "tokens": tokens, "scan_s": scan_s, "pack_s": pack_s,
            "tokens_per_s": tokens / (scan_s + pack_s), "pack_tokens_per_s": tokens / pack_s,
            "driver_rss_mb": peak_rss_mb(), "worker_rss_mb": packed.stats["worker_peak_rss_mb"],
            "duplicates": packed.stats["duplicates_dropped"], "vocab": len(tokenizer)}


def pretrain(out: str, steps: int, compare: bool) -> dict:
    """Bare-torch pre-training steps of the tiny model on the streamed shards (and, with
    ``compare``, on the in-memory tensor the loop used before), interleaved."""
    import numpy as np
    import torch

    from components.common.config import load_config
    from components.common.modeling import random_init_model
    from components.data_prep.manifest import TokenSplit
    from components.data_prep.shards import BlockReader, read_split
    from components.data_prep.token_shards import peak_rss_mb
    from components.common.modeling import load_tokenizer
    from components.pretrain.train_loop import BlockSampler, build_optimizer

    cfg = load_config("tiny", [])
    torch.set_num_threads(1)
    manifest = json.loads(Path(out, "manifest.json").read_text())
    tokenizer = load_tokenizer(f"{out}/tokenizer")
    pc = cfg.pretrain
    split = TokenSplit.from_manifest(manifest, "train")
    reader = BlockReader(split)
    sampler = BlockSampler(len(reader), cfg.seed, 0, 1, pc.micro_batch_size, 1)
    memory = torch.from_numpy(read_split(manifest, "train").astype(np.int64)) if compare else None
    rss_stream = peak_rss_mb() if not compare else None

    def model_and_opt():
        model = random_init_model(cfg.model, tokenizer, cfg.seed)
        model.config.use_cache = False
        return model, build_optimizer(model, pc.lr, pc.weight_decay)

    sides = {"stream": model_and_opt()}
    if compare:
        sides["memory"] = model_and_opt()
    seconds = {k: 0.0 for k in sides}
    for step in range(steps):
        ids = sampler.ids(0)
        for name, (model, opt) in (list(sides.items()) if step % 2 else list(sides.items())[::-1]):
            t0 = time.perf_counter()
            if name == "stream":
                batch = torch.from_numpy(reader.read(ids).astype(np.int64))
            else:
                batch = memory[ids]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss)
            if step >= 3:
                seconds[name] += time.perf_counter() - t0
        sampler.advance()
    tokens = (steps - 3) * pc.micro_batch_size * split.seq_len
    out_ = {f"{k}_tokens_per_s": tokens / v for k, v in seconds.items()}
    out_["rss_mb"] = peak_rss_mb() if not compare else rss_stream
    out_["blocks"] = len(reader)
    return out_


def tokenize_only(corpus: str, tokenizer_dir: str, docs: int) -> dict:
    """Fast-tokenizer throughput of one bare process on the corpus's first ``docs`` documents."""
    from tokenizers import Tokenizer

    texts = []
    for path in sorted(Path(corpus).glob("*.jsonl")):
        with open(path) as fh:
            for line in fh:
                texts.append(json.loads(line)["text"])
                if len(texts) == docs:
                    break
        if len(texts) == docs:
            break
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir, "tokenizer.json")))
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), 256):
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(texts[i:i + 256], add_special_tokens=False))
    return {"tokens_per_s": tokens / (time.perf_counter() - started)}


def ceiling(corpus: Path, tokenizer_dir: Path, docs: int = 12000) -> dict:
    """Tokens/s of one bare tokenizing process, and of two running at once (their sum)."""
    args = ["tok", str(corpus), str(tokenizer_dir), str(docs)]
    alone = _child(args)["tokens_per_s"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", *args], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    together = sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["tokens_per_s"] for p in procs)
    return {"alone": alone, "two_at_once": together, "ratio": together / alone}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {args} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="corpus sizes in MB")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--big-workers", type=int, nargs="+", default=[2], help="worker counts above 200 MB")
    parser.add_argument("--pretrain-steps", type=int, default=40)
    parser.add_argument("--root", default=None, help="folder for corpora and shards (default: a temp dir)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prep":
            result = prep(rest[0], rest[1], int(rest[2]))
        elif kind == "tok":
            result = tokenize_only(rest[0], rest[1], int(rest[2]))
        else:
            result = pretrain(rest[0], int(rest[1]), rest[2] == "1")
        print(json.dumps(result))
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="stream-bench-"))
    rows = []
    machine = None
    for size in args.sizes:
        corpus = root / f"corpus-{size}mb"
        if not corpus.exists():
            t0 = time.perf_counter()
            generate(corpus, size)
            print(f"generated {size} MB in {time.perf_counter() - t0:.0f}s", flush=True)
        for workers in (args.workers if size <= 200 else args.big_workers):
            out = root / f"out-{size}-{workers}"
            load = os.getloadavg()[0]
            r = _child(["prep", str(corpus), str(out), str(workers)])
            r.update(size_mb=size, workers=workers, load_before=load, load_after=os.getloadavg()[0])
            print(json.dumps(r), flush=True)
            rows.append(r)
            if machine is None:
                machine = ceiling(corpus, out / "tokenizer")
                print(json.dumps({"ceiling": machine}), flush=True)
        out = root / f"out-{size}-{(args.workers if size <= 200 else args.big_workers)[-1]}"
        p = _child(["pretrain", str(out), str(args.pretrain_steps), "0"])
        p.update(size_mb=size)
        if size <= 200:
            p.update({k: v for k, v in _child(["pretrain", str(out), str(args.pretrain_steps), "1"]).items()
                      if k.endswith("tokens_per_s")})
        print(json.dumps(p), flush=True)
        rows.append({"pretrain": p})
    print("\nsize  workers  tokens/s  (pack only)  driver RSS MB  worker RSS MB  load")
    for r in rows:
        if "pretrain" not in r:
            print(f"{r['size_mb']:>4}  {r['workers']:>7}  {r['tokens_per_s']:>8.0f}  {r['pack_tokens_per_s']:>11.0f}"
                  f"  {r['driver_rss_mb']:>13.0f}  {r['worker_rss_mb']:>13.0f}  {r['load_before']:.1f}/{r['load_after']:.1f}")
    by = {(r["size_mb"], r["workers"]): r for r in rows if "pretrain" not in r}
    for size in args.sizes:
        if (size, 1) in by and (size, 2) in by:
            print(f"{size} MB: 2 workers / 1 worker tokens/s = {by[(size, 2)]['tokens_per_s'] / by[(size, 1)]['tokens_per_s']:.2f}"
                  f" (pack only {by[(size, 2)]['pack_tokens_per_s'] / by[(size, 1)]['pack_tokens_per_s']:.2f})")
    if machine:
        print(f"machine ceiling: two bare tokenizing processes / one = {machine['ratio']:.2f} "
              f"({machine['two_at_once']:.0f} vs {machine['alone']:.0f} tokens/s, no Ray, no I/O)")
    pre = [r["pretrain"] for r in rows if "pretrain" in r]
    for p in pre:
        line = f"pretrain {p['size_mb']} MB ({p['blocks']} blocks): streaming worker peak RSS {p['rss_mb']:.0f} MB"
        if "memory_tokens_per_s" in p:
            line += (f"; tokens/s streaming {p['stream_tokens_per_s']:.0f} vs in-memory {p['memory_tokens_per_s']:.0f}"
                     f" = {p['stream_tokens_per_s'] / p['memory_tokens_per_s']:.3f}")
        print(line)
    if len(args.sizes) >= 2:
        small, big = min(args.sizes), max(args.sizes)
        bs = [r for r in rows if "pretrain" not in r and r["size_mb"] == big]
        ss = [r for r in rows if "pretrain" not in r and r["size_mb"] == small and r["workers"] == bs[-1]["workers"]]
        if bs and ss:
            for key in ("driver_rss_mb", "worker_rss_mb"):
                print(f"data prep {key}: {big} MB / {small} MB = {bs[-1][key] / ss[-1][key]:.2f}")
        pb = {p["size_mb"]: p["rss_mb"] for p in pre}
        print(f"pretrain worker RSS: {big} MB / {small} MB = {pb[big] / pb[small]:.2f}")


if __name__ == "__main__":
    main()
