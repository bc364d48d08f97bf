"""BPE speed on the default corpus (Shakespeare, 5 MB): minillm against HF `tokenizers` and
tiktoken in the same run, same merges, 2 threads.

    python -m pytest bench/bench_tokenizer.py   # pytest-benchmark's tables
    python bench/bench_tokenizer.py             # the same, then one table with MB/s and ratios
(set OMP_NUM_THREADS=2 MINILLM_NUM_THREADS=2 and unset OPENBLAS_* as `make bench` does)

Groups: train-2048 and train-8192 (minillm vs HF BpeTrainer, ByteLevel), encode-string (one
5 MB string), encode-batch (its ~187k lines as a list), decode (the ids of the whole corpus),
and per family of HF tokenizer.json files (llama3, qwen2, smollm2, llama2, mistral: minillm's
HFTokenizer vs HF `tokenizers` on the same file) family-string-* and family-batch-*.
Encoders use the 8,192-id vocabulary trained by minillm, loaded by HF from our tokenizer.json
and by tiktoken from our ranks. The corpus comes from data/shakespeare/input.txt
($MINILLM_DATA_DIR), fetched once if missing; the benchmarks skip if it cannot be had.
"""
import os
import sys

os.environ.setdefault("MINILLM_NUM_THREADS", "2")
os.environ.setdefault("RAYON_NUM_THREADS", "2")          # HF tokenizers' thread pool
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

if __name__ == "__main__":     # run as a script from anywhere: import the repo's minillm
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

from minillm.tokenizers import BPETokenizer  # noqa: E402

THREADS = int(os.environ["MINILLM_NUM_THREADS"])
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def corpus():
    from minillm.corpus import prepare_shakespeare
    try:
        folder = prepare_shakespeare()
    except RuntimeError as e:
        pytest.skip(f"default corpus unavailable: {e}")
    with open(os.path.join(folder, "input.txt"), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def tok(corpus):
    return BPETokenizer().train(corpus, 8192, num_threads=THREADS)


@pytest.fixture(scope="module")
def hf_tok(tok, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    folder = tok.save(str(tmp_path_factory.mktemp("tok8192")))
    return tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


@pytest.fixture(scope="module")
def tt_enc(tok):
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding("minillm-8192", pat_str=GPT2_PATTERN,
                             mergeable_ranks={tok.vocab[i]: i for i in tok.vocab},
                             special_tokens=dict(tok.special_tokens))


def run(benchmark, fn, nbytes, rounds):
    benchmark.extra_info["bytes"] = nbytes
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)


def hf_train(text, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator([text], trainer)
    return hf


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("vocab", [2048, 8192])
def test_train_minillm(benchmark, corpus, vocab):
    benchmark.group = f"train-{vocab}"
    tok = run(benchmark, lambda: BPETokenizer().train(corpus, vocab, num_threads=THREADS),
              len(corpus.encode()), 5)
    assert tok.vocab_size == vocab


@pytest.mark.parametrize("vocab", [2048, 8192])
def test_train_hf(benchmark, corpus, vocab):
    pytest.importorskip("tokenizers")
    benchmark.group = f"train-{vocab}"
    hf = run(benchmark, lambda: hf_train(corpus, vocab), len(corpus.encode()), 3)
    assert hf.get_vocab_size() == vocab


# ---------------------------------------------------------------------- encoding
def test_encode_string_minillm(benchmark, corpus, tok):
    benchmark.group = "encode-string"
    ids = run(benchmark, lambda: tok.encode_ndarray(corpus, num_threads=THREADS),
              len(corpus.encode()), 10)
    assert tok.decode(ids) == corpus


def test_encode_string_minillm_list(benchmark, corpus, tok):
    benchmark.group = "encode-string"
    run(benchmark, lambda: tok.encode(corpus, num_threads=THREADS), len(corpus.encode()), 10)


def test_encode_string_tiktoken(benchmark, corpus, tok, tt_enc):
    benchmark.group = "encode-string"
    ids = run(benchmark, lambda: tt_enc.encode_ordinary(corpus), len(corpus.encode()), 3)
    assert ids == tok.encode(corpus)


def test_encode_string_hf(benchmark, corpus, tok, hf_tok):
    benchmark.group = "encode-string"
    enc = run(benchmark, lambda: hf_tok.encode(corpus), len(corpus.encode()), 1)
    assert enc.ids == tok.encode(corpus)


@pytest.fixture(scope="module")
def lines(corpus):
    return corpus.splitlines(keepends=True)


def test_encode_batch_minillm(benchmark, corpus, lines, tok):
    benchmark.group = "encode-batch"
    out = run(benchmark, lambda: tok.encode_batch(lines, num_threads=THREADS),
              len(corpus.encode()), 5)
    assert out[100] == tok.encode(lines[100])


def test_encode_batch_tiktoken(benchmark, corpus, lines, tok, tt_enc):
    benchmark.group = "encode-batch"
    out = run(benchmark, lambda: tt_enc.encode_ordinary_batch(lines, num_threads=THREADS),
              len(corpus.encode()), 1)
    assert out[100] == tok.encode(lines[100])


def test_encode_batch_hf(benchmark, corpus, lines, tok, hf_tok):
    benchmark.group = "encode-batch"
    out = run(benchmark, lambda: hf_tok.encode_batch(lines, add_special_tokens=False),
              len(corpus.encode()), 2)
    assert out[100].ids == tok.encode(lines[100])


# ---------------------------------------------------------------------- HF tokenizer.json families
# One tokenizer.json per family (tests/tokenizer_families.py: each family's pre-tokenizer,
# normalizer, model options and special tokens, vocabularies trained on tests/data), read by
# minillm's HFTokenizer and by HF `tokenizers`; both encode the corpus as one string and as
# its lines, special tokens added as the file says.
BENCH_FAMILIES = ["llama3", "qwen2", "smollm2", "llama2", "mistral"]


@pytest.fixture(scope="module", params=BENCH_FAMILIES)
def family_pair(request, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "tests"))
    from tokenizer_families import build_family
    from minillm.tokenizers import HFTokenizer
    path = build_family(request.param, str(tmp_path_factory.mktemp(request.param)))
    return request.param, HFTokenizer.from_file(path), tokenizers.Tokenizer.from_file(path)


def test_family_encode_string_minillm(benchmark, corpus, family_pair):
    name, ours, hf = family_pair
    benchmark.group = f"family-string-{name}"
    ids = run(benchmark, lambda: ours.encode(corpus, num_threads=THREADS), len(corpus.encode()), 3)
    assert ids == hf.encode(corpus).ids


def test_family_encode_string_hf(benchmark, corpus, family_pair):
    name, ours, hf = family_pair
    benchmark.group = f"family-string-{name}"
    run(benchmark, lambda: hf.encode(corpus), len(corpus.encode()), 1)


def test_family_encode_batch_minillm(benchmark, corpus, lines, family_pair):
    name, ours, hf = family_pair
    benchmark.group = f"family-batch-{name}"
    out = run(benchmark, lambda: ours.encode_batch(lines, num_threads=THREADS),
              len(corpus.encode()), 3)
    assert out[100] == hf.encode(lines[100]).ids


def test_family_encode_batch_hf(benchmark, corpus, lines, family_pair):
    name, ours, hf = family_pair
    benchmark.group = f"family-batch-{name}"
    run(benchmark, lambda: hf.encode_batch(lines), len(corpus.encode()), 1)


# ---------------------------------------------------------------------- decoding
@pytest.fixture(scope="module")
def corpus_ids(corpus, tok):
    return tok.encode(corpus)


def test_decode_minillm(benchmark, corpus, tok, corpus_ids):
    benchmark.group = "decode"
    assert run(benchmark, lambda: tok.decode(corpus_ids), len(corpus.encode()), 10) == corpus


def test_decode_tiktoken(benchmark, corpus, tt_enc, corpus_ids):
    benchmark.group = "decode"
    assert run(benchmark, lambda: tt_enc.decode(corpus_ids), len(corpus.encode()), 5) == corpus


def test_decode_hf(benchmark, corpus, hf_tok, corpus_ids):
    benchmark.group = "decode"
    assert run(benchmark, lambda: hf_tok.decode(corpus_ids), len(corpus.encode()), 3) == corpus


# ---------------------------------------------------------------------- table
def print_table(json_path):
    """Median time, MB/s and the ratio to each peer, per group, from pytest-benchmark's JSON."""
    import json
    with open(json_path) as f:
        rows = json.load(f)["benchmarks"]
    groups = {}
    for r in rows:
        who = r["name"].split("[")[0].rsplit("_", 1)[-1]
        if r["name"].endswith("_minillm_list"):
            who = "minillm (list)"
        groups.setdefault(r["group"], {})[who] = (r["stats"]["median"], r["extra_info"]["bytes"])
    print(f"\n{'group':<14} {'library':<15} {'median s':>9} {'MB/s':>8}   minillm speed-up")
    for group in sorted(groups):
        entries = groups[group]
        ours = entries.get("minillm", (None,))[0]
        for who, (t, nbytes) in sorted(entries.items(), key=lambda kv: kv[1][0]):
            ratio = f"x{t / ours:.2f}" if ours and not who.startswith("minillm") else ""
            print(f"{group:<14} {who:<15} {t:>9.4f} {nbytes / t / 1e6:>8.1f}   {ratio}")


if __name__ == "__main__":
    import tempfile
    out = os.path.join(tempfile.mkdtemp(), "bench.json")
    status = pytest.main([__file__, "-q", "--benchmark-columns=median,iqr,ops",
                          "--benchmark-sort=name", f"--benchmark-json={out}"] + sys.argv[1:])
    if os.path.exists(out):
        print_table(out)
    sys.exit(status)
