"""`minillm data prepare` on a large generated text: throughput and peak memory.

The issue's bound: tokenizing a 500 MB input keeps the peak RSS under 1 GB, because the text
is streamed in chunks (minillm.data.PREPARE_CHUNK_BYTES) whatever its size. Each measurement
runs in a child process, so its peak RSS (ru_maxrss of the child) is its own.

    python bench/bench_data_prepare.py                # 500 MB, the issue's check
    python bench/bench_data_prepare.py --mb 50        # quicker
    pytest bench/bench_data_prepare.py                # 50 MB by default ($MINILLM_BENCH_PREPARE_MB)

Prints MB/s and peak RSS for 1 and 2 threads; the text is Shakespeare-like (words drawn from
tests/data/sample.txt in random order, with line breaks), so the BPE sees realistic words.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "tests", "data", "sample.txt")
RSS_LIMIT_MB = 1024


def make_text(path, megabytes, seed=0):
    """Write about `megabytes` MB of text: sample.txt's words shuffled into lines (a 4 MB block
    drawn once, then written again with its lines rotated, so writing is not the bottleneck)."""
    import numpy as np
    with open(SAMPLE, encoding="utf-8") as f:
        words = np.array(f.read().split())
    rng = np.random.default_rng(seed)
    block = words[rng.integers(0, len(words), 700_000)]
    lines = [" ".join(block[i:i + 12]) for i in range(0, len(block), 12)]
    target = int(megabytes * 1e6)
    written, k = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            s = "\n".join(lines[k:] + lines[:k]) + "\n"
            f.write(s)
            written += len(s.encode("utf-8"))
            k = (k + 9973) % len(lines)
    return written


def child(args):
    """Runs in the child: tokenize, then report seconds and peak RSS as JSON on stdout."""
    from minillm.data import prepare_tokens
    t0 = time.perf_counter()
    meta = prepare_tokens([args.input], args.tokenizer, args.out, val_fraction=0.01,
                          num_threads=args.threads)
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024    # Linux: KiB
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "tokens": tokens}))


def measure(text_path, tok_dir, out_dir, threads):
    env = dict(os.environ)
    env["MINILLM_NUM_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, __file__, "--child", "--input", text_path,
                          "--tokenizer", tok_dir, "--out", out_dir, "--threads", str(threads)],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(megabytes):
    """Generate the text and a 4096-id tokenizer, measure 1 and 2 threads; returns the rows."""
    from minillm.tokenizers import BPETokenizer
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "big.txt")
        nbytes = make_text(text_path, megabytes)
        with open(SAMPLE, encoding="utf-8") as f:
            BPETokenizer().train(f.read(), 4096).save(os.path.join(tmp, "tok"))
        for threads in (1, 2):
            r = measure(text_path, os.path.join(tmp, "tok"), os.path.join(tmp, "out"), threads)
            r.update(threads=threads, mb=nbytes / 1e6, mb_per_s=nbytes / 1e6 / r["seconds"])
            rows.append(r)
            print(f"{nbytes / 1e6:,.0f} MB, {threads} thread(s): {r['seconds']:.1f} s, "
                  f"{r['mb_per_s']:.1f} MB/s, {r['tokens']:,} tokens, peak RSS {r['rss_mb']:.0f} MB "
                  f"(limit {RSS_LIMIT_MB})", flush=True)
    return rows


def test_prepare_streams_in_bounded_memory():
    rows = run(float(os.environ.get("MINILLM_BENCH_PREPARE_MB", "50")))
    for r in rows:
        assert r["rss_mb"] < RSS_LIMIT_MB, r


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=500.0, help="size of the generated text (MB)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
    else:
        rows = run(a.mb)
        worst = max(r["rss_mb"] for r in rows)
        print(f"peak RSS {worst:.0f} MB: {'under' if worst < RSS_LIMIT_MB else 'OVER'} the "
              f"{RSS_LIMIT_MB} MB bound")
        sys.exit(0 if worst < RSS_LIMIT_MB else 1)
