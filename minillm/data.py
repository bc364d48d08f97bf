"""Data for training.

Batches: mini-batches over in-memory arrays, shuffled per epoch from a seed, resumable.
"""
import numpy as np

from minillm import _C
from minillm.progress import Progress
from minillm.random import Generator
from minillm.utils import default_num_threads, folder_temp, pause_point, read_json, replace_folder, write_json

Tensor = _C.Tensor

__all__ = ["Batches"]


# ------------------------------------------------------------ in-memory mini-batches
class Batches:
    """Iterate mini-batches over arrays that share their first axis.

    ``Batches(x, y, batch_size=64, shuffle=True, drop_last=False, seed=0)``: x and y are
    NumPy arrays or minillm Tensors of shapes (N, ...) with the same N. Each iteration
    (``for xb, yb in batches``) runs one epoch from the current position and yields tuples
    of Tensors (a single Tensor when one array was given) of shapes (B, ...), B =
    batch_size except possibly the last batch (dropped when drop_last). With shuffle, the
    order of epoch e is the permutation drawn by ``Generator(seed)`` after e earlier
    epochs' permutations: the same for a given seed, whatever the thread count.

    ``state_dict()`` returns {'epoch', 'position', 'seed'} (plain ints): loading it into a
    new Batches over the same arrays resumes at the next batch the old one would have
    yielded.
    """

    def __init__(self, *arrays, batch_size, shuffle=True, drop_last=False, seed=0):
        if not arrays:
            raise ValueError("Batches needs at least one array")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"Batches: batch_size must be a positive int, got {batch_size!r}")
        self._arrays = []
        for i, a in enumerate(arrays):
            if isinstance(a, Tensor):
                a = np.asarray(a)
            elif not isinstance(a, np.ndarray):
                raise TypeError(f"Batches: array {i} is a {type(a).__name__}, expected a NumPy array "
                                f"or a minillm Tensor")
            if a.ndim == 0:
                raise ValueError(f"Batches: array {i} is 0-d; arrays need a leading batch axis")
            if a.dtype == np.float64:
                a = a.astype(np.float32)
            self._arrays.append(a)
        n = len(self._arrays[0])
        for i, a in enumerate(self._arrays):
            if len(a) != n:
                shapes = [tuple(x.shape) for x in self._arrays]
                raise ValueError(f"Batches: arrays must share their first axis, got shapes {shapes}")
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.position = 0          # batches already yielded in the current epoch
        self._order_epoch = None
        self._order = None

    def __len__(self):
        """Batches per epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def _epoch_order(self, epoch):
        if not self.shuffle:
            return None
        if self._order_epoch != epoch:
            # one generator per epoch, offset by the words earlier epochs used, so epoch e's
            # order is computable without replaying the batches before it
            g = Generator(self.seed)
            g.claim(epoch * 2 * self.n)
            self._order = g.permutation(self.n)
            self._order_epoch = epoch
        return self._order

    def _batch(self, order, b):
        lo = b * self.batch_size
        hi = min(lo + self.batch_size, self.n)
        if order is None:
            parts = [a[lo:hi] for a in self._arrays]
        else:
            idx = order[lo:hi]
            parts = [np.take(a, idx, axis=0) for a in self._arrays]
        out = tuple(Tensor.from_numpy(np.ascontiguousarray(p)) for p in parts)
        return out[0] if len(out) == 1 else out

    def __iter__(self):
        nb = len(self)
        order = self._epoch_order(self.epoch)
        while self.position < nb:
            b = self.position
            self.position += 1
            yield self._batch(order, b)
        self.epoch += 1
        self.position = 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state):
        """Resume where state_dict() was taken; ValueError if it came from another seed or
        points past the end of an epoch."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"Batches.load_state_dict: state has seed {state['seed']}, this has {self.seed}")
        pos = int(state["position"])
        if not 0 <= pos <= len(self):
            raise ValueError(f"Batches.load_state_dict: position {pos} outside [0, {len(self)}]")
        self.epoch = int(state["epoch"])
        self.position = pos


# ================================================================= token files (training corpora)
# A prepared corpus is a folder:
#   meta.json       {"format": "minillm-tokens", "version": 1, "dtype": "uint16" | "uint32",
#                    "vocab_size": V, "eot_token": id or null,
#                    "splits": {"train": {"file": "train.bin", "tokens": n, "bytes": b}, "val": ...}}
#   train.bin       the token ids of the training text, raw little-endian, one after another
#   val.bin         the same for the validation text
#   tokenizer/      the tokenizer that made them; meta.json's "tokenizer_fingerprint" identifies
#                   it (tokenizer_fingerprint), so a run refuses tokens of another tokenizer
# Ids are uint16 when the vocabulary fits (as nanoGPT's train.bin), else uint32. The .bin files
# are read through a memory map, so a corpus larger than RAM trains fine.
# meta.json with "format": "minillm-tokens" is also the mark that minillm wrote the folder:
# prepare_tokens replaces only a folder so marked (and holding nothing else), never another one.
import hashlib as _hashlib
import json as _json
import os as _os
import shutil as _shutil

TOKENS_FORMAT = "minillm-tokens"
TOKENS_VERSION = 1
PREPARE_CHUNK_BYTES = 16 << 20    # bytes of text encoded per call; bounds peak memory

TOKEN_FILES = ("meta.json", "train.bin", "val.bin", "tokenizer")     # all a token folder holds
SNIFF_BYTES = 8192      # bytes read to tell a text file from a binary one

__all__ += ["encode_text", "token_dtype", "prepare_tokens", "TokenData", "load_tokens", "TokenBatches",
            "eval_windows", "token_byte_lengths", "list_text_files", "binary_reason",
            "is_token_folder", "check_output_folder", "tokenizer_fingerprint"]


def token_dtype(vocab_size):
    """np.uint16 when every id < vocab_size fits in 16 bits, else np.uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def binary_reason(path):
    """Why the file `path` is not text (a NUL byte, or bytes that are not UTF-8, within its
    first SNIFF_BYTES bytes), or None when it looks like UTF-8 text."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    nul = head.find(b"\0")
    if nul >= 0:
        return f"a NUL byte at offset {nul}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        cut_short = e.reason == "unexpected end of data" and len(head) == SNIFF_BYTES
        if not cut_short:           # a character cut by the end of the sniffed bytes is fine
            return f"not UTF-8 at byte {e.start} ({e.reason})"
    return None


def list_text_files(paths, pattern="*", skipped=None):
    """The files named by `paths` (files or folders, walked recursively in sorted order,
    hidden files and folders skipped, names matching the glob `pattern`): list of str.
    Inside folders, binary files (binary_reason) and token folders made by prepare_tokens are
    skipped: (path, reason) pairs are appended to the list `skipped` when given. ValueError
    names a path that does not exist, a binary file named directly, or a folder with no
    matching text file."""
    import fnmatch
    if isinstance(paths, (str, _os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = _os.fspath(p)
        if _os.path.isfile(p):
            why = binary_reason(p)
            if why is not None:
                raise ValueError(f"{p}: not a text file ({why}); binary files are refused when "
                                 f"named and skipped inside folders")
            out.append(p)
        elif _os.path.isdir(p):
            found = []
            for root, dirs, files in _os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                                 and not is_token_folder(_os.path.join(root, d)))
                for f in sorted(files):
                    if f.startswith(".") or not fnmatch.fnmatch(f, pattern):
                        continue
                    path = _os.path.join(root, f)
                    why = binary_reason(path)
                    if why is None:
                        found.append(path)
                    elif skipped is not None:
                        skipped.append((path, why))
            if not found:
                raise ValueError(f"{p}: folder holds no text file matching {pattern!r}")
            out.extend(found)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return out


def is_token_folder(path):
    """True when `path` is a folder made by prepare_tokens (its meta.json says so)."""
    meta = _os.path.join(_os.fspath(path), "meta.json")
    if not _os.path.isfile(meta):
        return False
    try:
        return read_json(meta).get("format") == TOKENS_FORMAT
    except (ValueError, AttributeError):
        return False


def _inside(path, folder):
    """True when real path `path` is `folder` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(_os.sep) + _os.sep)


def check_output_folder(out_dir, inputs=()):
    """ValueError unless prepare_tokens may write (and replace) the folder out_dir: it must be
    missing, empty, or a token folder made by prepare_tokens holding nothing else; it must not
    be a file, hold the current folder or any of `inputs` (paths of files or folders)."""
    out = _os.path.realpath(out_dir)
    if _os.path.exists(out) and not _os.path.isdir(out):
        raise ValueError(f"--out {out_dir}: is a file, not a folder")
    if _inside(_os.path.realpath(_os.getcwd()), out) or out == _os.path.realpath(_os.path.expanduser("~")):
        raise ValueError(f"--out {out_dir}: is (or holds) the current folder or your home folder; "
                         f"give a folder of its own, e.g. {_os.path.join(out_dir, 'tokens')}")
    for p in inputs:
        if _inside(_os.path.realpath(p), out):
            raise ValueError(f"--out {out_dir}: holds the input {p}, which replacing the folder "
                             f"would delete; choose another --out")
    if not _os.path.isdir(out):
        return
    entries = sorted(_os.listdir(out))
    if not entries:
        return
    if not is_token_folder(out):
        raise ValueError(f"--out {out_dir}: exists and was not made by `minillm data prepare` "
                         f"(it holds {entries[0]!r}); only such a folder is replaced: choose "
                         f"another --out or empty it")
    strangers = [e for e in entries if e not in TOKEN_FILES]
    if strangers:
        raise ValueError(f"--out {out_dir}: is a token folder but also holds {strangers[0]!r}, "
                         f"which replacing it would delete; move that away or choose another --out")


def tokenizer_fingerprint(tokenizer):
    """'sha256:<hex>' of what decides a tokenizer's ids: its class, every id's bytes, merges,
    special tokens and byte order. Equal fingerprints: the same text gives the same ids."""
    h = _hashlib.sha256()

    def add(obj):
        h.update(_json.dumps(obj, sort_keys=True, default=str).encode("utf-8"))
        h.update(b"\0")
    V = int(tokenizer.vocab_size)
    add([type(tokenizer).__name__, V])
    vocab = getattr(tokenizer, "vocab", None)
    doc = getattr(tokenizer, "doc", None)
    if isinstance(doc, dict):                # an HF tokenizer.json: the file decides the ids
        add(doc)
        return "sha256:" + h.hexdigest()
    if isinstance(vocab, dict):
        add([[int(i), bytes(b).hex()] for i, b in sorted(vocab.items())])
    elif hasattr(tokenizer, "itos"):
        add(list(tokenizer.itos))
    else:
        add([tokenizer.decode([i]) for i in range(V)])
    for name in ("merges", "special_tokens", "byte_ids", "lowercase", "pattern"):
        value = getattr(tokenizer, name, None)
        if value is not None and not callable(value):
            add([name, value if not isinstance(value, dict) else sorted(value.items())])
    return "sha256:" + h.hexdigest()


# A chunk of text may end where no pre-token of GPT-2's pattern crosses: between a printable
# ASCII character and a space or newline (no pre-token holds a non-space followed by a space:
# letter/number/punctuation runs take at most one *leading* space, whitespace runs start at a
# space). Encoding chunk by chunk then gives exactly the ids of encoding the whole text.
_PRINTABLE = bytes(range(0x21, 0x7f))


def _safe_cut(buf, lo, hi):
    """Largest cut in (lo, hi] with buf[cut - 1] printable ASCII and buf[cut] in b' \\n'
    (cut = position of the space), or -1."""
    i = hi
    while True:
        s = buf.rfind(b" ", lo, i)
        n = buf.rfind(b"\n", lo, i)
        j = max(s, n)
        if j <= lo:
            return -1
        if buf[j - 1] in _PRINTABLE:
            return j
        i = j


def _safe_cut_forward(buf, lo, hi):
    """Smallest cut in [lo, hi) (same rule as _safe_cut), or -1."""
    i = max(lo, 1)
    while i < hi:
        cands = [j for j in (buf.find(b" ", i, hi), buf.find(b"\n", i, hi)) if j >= 0]
        if not cands:
            return -1
        j = min(cands)
        if buf[j - 1] in _PRINTABLE:
            return j
        i = j + 1
    return -1


def _utf8_cut(buf, hi):
    """A position <= hi that does not split a UTF-8 sequence (fallback for text without spaces)."""
    j = hi
    while j > 0 and hi - j < 4 and (buf[j] & 0xC0) == 0x80:
        j -= 1
    return j if j > 0 else hi


def _whole_file(path):
    """The bytes of file `path` as one piece (for tokenizers whose ids chunk cuts could change)."""
    with open(path, "rb") as f:
        data = f.read()
    if data:
        yield data


def _text_chunks(path, chunk_bytes):
    """Yield the bytes of file `path` in pieces of about chunk_bytes, cut where no pre-token
    crosses (see _safe_cut); a piece grows up to 4 chunks looking for such a cut, then is cut
    at a UTF-8 character boundary."""
    with open(path, "rb") as f:
        buf = b""
        while True:
            more = f.read(chunk_bytes)
            buf += more
            if not more:
                if buf:
                    yield buf
                return
            if len(buf) < chunk_bytes:
                continue
            cut = _safe_cut(buf, len(buf) // 2 if len(buf) > chunk_bytes else 0, len(buf) - 1)
            if cut < 0:
                if len(buf) < 4 * chunk_bytes:
                    continue
                cut = _utf8_cut(buf, len(buf) - 1)
            yield buf[:cut]
            buf = buf[cut:]


class _Encoder:
    """bytes -> uint32 ids with a tokenizer: the C encoder on all threads for BPE, else
    decode + tokenizer.encode (an HF tokenizer.json's without the special tokens its
    post-processor would add around every chunk: documents are separated by add_eot).

    whole_files: the chunk cuts of _text_chunks keep the ids of GPT-2's pre-tokenizer only; an
    HF tokenizer (other split rules, a metaspace prepended at the start of a text) gets each
    file whole, so its ids are those of the file encoded at once."""

    def __init__(self, tokenizer, num_threads):
        self.tok = tokenizer
        self.native = getattr(tokenizer, "_encoder", None)
        self.threads = num_threads or default_num_threads()
        self.whole_files = self.native is None and _takes_special_flag(tokenizer)

    def __call__(self, data, path):
        if self.native is not None:
            return self.native.encode(data, self.threads)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not valid UTF-8 ({e.reason})") from None
        return np.asarray(encode_text(self.tok, text), dtype=np.uint32)


def encode_text(tokenizer, text):
    """The ids of plain text with nothing added around it: an HF tokenizer.json tokenizer's
    post-processor (a BOS, ...) is left out; other tokenizers add nothing anyway."""
    if _takes_special_flag(tokenizer):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def _takes_special_flag(tokenizer):
    """Whether tokenizer.encode takes add_special_tokens (HF tokenizer.json tokenizers)."""
    import inspect
    try:
        return "add_special_tokens" in inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):
        return False


def prepare_tokens(inputs, tokenizer, out_dir, val_inputs=None, val_fraction=0.1,
                   pattern="*", add_eot=True, chunk_bytes=PREPARE_CHUNK_BYTES,
                   num_threads=None, progress=False):
    """Tokenize text files into a token folder (see the comment above for the layout).

    inputs: paths of UTF-8 text files or folders of them (list_text_files(inputs, pattern)).
    tokenizer: a tokenizer object or the path of a saved one (folder or tokenizer.json).
    val_inputs: files/folders for the validation split; when None, the last `val_fraction`
        of the input bytes (all files in order) becomes the validation split instead.
    add_eot: end every file with the tokenizer's <|endoftext|> id (when it has one).
    Memory stays bounded by a few chunk_bytes whatever the input size: files are read in
    chunks cut where no pre-token crosses, so the ids equal those of encoding each file whole;
    each chunk is encoded by the C encoder on num_threads threads (default: all cores).
    out_dir may be missing, empty or a token folder of an earlier prepare_tokens (replaced);
    anything else is refused (check_output_folder), so no folder of the user's is ever deleted.
    Binary files inside input folders are skipped (listed in meta.json's "skipped"); a binary
    file named in `inputs` is refused. The folder is written under a temporary name
    (.<name>.<writer>.tmp, removed by the next run if this one is killed) and renamed into
    place. Returns the meta dict (also in out_dir/meta.json). progress: a minillm.progress mode (auto, bar, log, none;
    True is auto, False none) for a report over the input bytes on stderr.
    """
    from .tokenizers import load_tokenizer
    if isinstance(tokenizer, (str, _os.PathLike)):
        tokenizer = load_tokenizer(_os.fspath(tokenizer))
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_bytes < 64:
        raise ValueError(f"chunk_bytes must be at least 64, got {chunk_bytes}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    out_dir = _os.fspath(out_dir)
    given = [inputs] if isinstance(inputs, (str, _os.PathLike)) else list(inputs)
    given += [val_inputs] if isinstance(val_inputs, (str, _os.PathLike)) else list(val_inputs or [])
    check_output_folder(out_dir, given)
    skipped = []
    train_files = list_text_files(inputs, pattern, skipped)
    val_files = list_text_files(val_inputs, pattern, skipped) if val_inputs else []
    check_output_folder(out_dir, train_files + val_files)
    sizes = {p: _os.path.getsize(p) for p in train_files + val_files}
    total = sum(sizes.values())
    if sum(sizes[p] for p in train_files) == 0:
        raise ValueError(f"the training input holds no text: {len(train_files)} file(s) of 0 bytes "
                         f"({train_files[0]})")
    vocab_size = int(tokenizer.vocab_size)
    dtype = token_dtype(vocab_size)
    eot = getattr(tokenizer, "eot_token", None) if add_eot else None
    encode = _Encoder(tokenizer, num_threads)

    tmp, tag = folder_temp(out_dir)    # after removing a killed prepare's leftovers
    _os.makedirs(tmp)
    # without val files: bytes [0, split_at) of the concatenated inputs train, the rest validates
    split_at = None if val_files else int(sum(sizes[p] for p in train_files) * (1.0 - val_fraction))
    stats = {"train": {"file": "train.bin", "tokens": 0, "bytes": 0, "files": len(train_files)},
             "val": {"file": "val.bin", "tokens": 0, "bytes": 0, "files": len(val_files)}}
    report = Progress(total, "tokenizing", unit="B", unit_scale=True, mode=progress)
    try:
        with open(_os.path.join(tmp, "train.bin"), "wb") as ftrain, \
                open(_os.path.join(tmp, "val.bin"), "wb") as fval:
            outs = {"train": ftrain, "val": fval}

            def emit(split, data, path):
                if data:
                    ids = encode(data, path)
                    if ids.size and int(ids.max()) >= vocab_size:
                        raise ValueError(f"{path}: id {int(ids.max())} >= vocab_size {vocab_size}")
                    ids.astype(dtype, copy=False).tofile(outs[split])
                    stats[split]["tokens"] += int(ids.size)
                    stats[split]["bytes"] += len(data)
                    report.update(len(data))
                    pause_point("data-prepare")

            def end_document(split):
                if eot is not None:
                    np.array([eot], dtype=dtype).tofile(outs[split])
                    stats[split]["tokens"] += 1

            offset = 0
            whole = encode.whole_files
            for path in train_files:
                for data in (_whole_file(path) if whole else _text_chunks(path, chunk_bytes)):
                    if split_at is not None and offset < split_at < offset + len(data):
                        local = split_at - offset
                        cut = _safe_cut_forward(data, local, len(data))
                        if cut < 0:
                            cut = _safe_cut(data, 0, local)
                        if cut < 0:
                            cut = _utf8_cut(data, local)
                        emit("train", data[:cut], path)
                        emit("val", data[cut:], path)
                    else:
                        emit("train" if split_at is None or offset + len(data) <= split_at
                             else "val", data, path)
                    offset += len(data)
                # the document ends in whichever split its last byte went to
                end_document("train" if split_at is None or offset <= split_at else "val")
            for path in val_files:
                for data in (_whole_file(path) if whole else _text_chunks(path, chunk_bytes)):
                    emit("val", data, path)
                end_document("val")
        report.close()
        tok_path = _os.path.join(tmp, "tokenizer")
        tokenizer.save(tok_path)
        meta = {"format": TOKENS_FORMAT, "version": TOKENS_VERSION, "dtype": dtype.name,
                "vocab_size": vocab_size, "eot_token": eot, "tokenizer": "tokenizer",
                "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
                "inputs": [_os.path.abspath(p) for p in train_files],
                "val_inputs": [_os.path.abspath(p) for p in val_files],
                "val_fraction": None if val_files else val_fraction, "splits": stats,
                "skipped": [{"path": _os.path.abspath(p), "reason": why} for p, why in skipped]}
        write_json(_os.path.join(tmp, "meta.json"), meta)
        check_output_folder(out_dir, train_files + val_files)    # nobody put anything there meanwhile
        replace_folder(tmp, out_dir, tag)
    except BaseException:
        report.close()
        _shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


class TokenData:
    """A prepared token folder, opened: `meta` (dict), `vocab_size`, `dtype`, `split(name)`
    -> read-only (n,) memory-mapped array of ids, `tokenizer()` -> the tokenizer that made
    them, `fingerprint()` -> that tokenizer's tokenizer_fingerprint. ValueError names the file
    when the folder is incomplete, meta.json is malformed, or a .bin file's size disagrees with
    meta.json (truncated); check_ids() finds ids outside the vocabulary."""

    def __init__(self, path):
        self.path = _os.fspath(path)
        meta_path = _os.path.join(self.path, "meta.json")
        if not _os.path.isfile(meta_path):
            raise ValueError(f"{self.path}: not a token folder (no meta.json); make one with "
                             f"`minillm data prepare`")
        self.meta = read_json(meta_path)
        if not isinstance(self.meta, dict) or self.meta.get("format") != TOKENS_FORMAT:
            got = self.meta.get("format") if isinstance(self.meta, dict) else self.meta
            raise ValueError(f"{meta_path}: format is {got!r}, expected {TOKENS_FORMAT!r}")
        problem = self._malformed(self.meta)
        if problem:
            raise ValueError(f"{meta_path}: {problem}; make the folder again with `minillm data "
                             f"prepare`")
        self.vocab_size = self.meta["vocab_size"]
        self.dtype = np.dtype(self.meta["dtype"])
        self._maps = {}

    @staticmethod
    def _malformed(meta):
        """What is wrong with a meta.json dict, or None."""
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)
        if not is_int(meta.get("vocab_size")) or not 0 < meta["vocab_size"] <= 2 ** 32:
            return f"vocab_size {meta.get('vocab_size')!r} is not an integer in [1, 2**32]"
        if meta.get("dtype") not in ("uint16", "uint32"):
            return f"dtype {meta.get('dtype')!r} is not uint16 or uint32"
        if meta["dtype"] == "uint16" and meta["vocab_size"] > 1 << 16:
            return f"vocab_size {meta['vocab_size']} does not fit dtype uint16"
        splits = meta.get("splits")
        if not isinstance(splits, dict):
            return f"splits {splits!r} is not an object"
        for name, info in splits.items():
            if not isinstance(info, dict) or not is_int(info.get("tokens")) or info["tokens"] < 0 \
                    or not isinstance(info.get("file"), str) or _os.path.basename(info["file"]) != info["file"] \
                    or info["file"] in ("", ".", ".."):
                return f"split {name!r} is {info!r}, not {{\"file\": name, \"tokens\": count}}"
        for key in ("tokenizer", "tokenizer_fingerprint"):
            if meta.get(key) is not None and not isinstance(meta[key], str):
                return f"{key} {meta[key]!r} is not a string"
        return None

    def split(self, name):
        """(n,) read-only memmap of the ids of split `name` ('train' or 'val')."""
        if name in self._maps:
            return self._maps[name]
        splits = self.meta.get("splits", {})
        if name not in splits:
            raise ValueError(f"{self.path}: no split {name!r} (has {sorted(splits)})")
        info = splits[name]
        path = self.split_path(name)
        if not _os.path.isfile(path):
            raise ValueError(f"{path}: missing (meta.json lists it with {info['tokens']} tokens)")
        expected = int(info["tokens"]) * self.dtype.itemsize
        size = _os.path.getsize(path)
        if size != expected:
            raise ValueError(f"{path}: {size} bytes, meta.json says {info['tokens']} tokens of "
                             f"{self.dtype.name} = {expected} bytes (truncated or rewritten?)")
        arr = (np.memmap(path, dtype=self.dtype, mode="r") if size
               else np.zeros(0, dtype=self.dtype))
        self._maps[name] = arr
        return arr

    def split_path(self, name):
        """The .bin file of split `name`."""
        return _os.path.join(self.path, self.meta["splits"][name]["file"])

    def check_ids(self, name, chunk=1 << 24):
        """ValueError naming the file and the position of the first id >= vocab_size in split
        `name` (read in chunks of `chunk` ids: memory stays bounded)."""
        ids = self.split(name)
        for lo in range(0, len(ids), chunk):
            part = ids[lo:lo + chunk]
            if int(part.max()) >= self.vocab_size:
                at = lo + int(np.argmax(part >= self.vocab_size))
                raise ValueError(f"{self.split_path(name)}: token {at:,} is id {int(ids[at])}, "
                                 f"outside the vocabulary of {self.vocab_size} ids (a damaged or "
                                 f"foreign token file; make it again with `minillm data prepare`)")

    def tokenizer(self):
        """The tokenizer saved with the tokens (a damaged one: ValueError naming it)."""
        from .tokenizers import load_tokenizer
        try:
            return load_tokenizer(self.tokenizer_path())
        except ValueError:
            raise
        except (TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError) as e:
            raise ValueError(f"{self.tokenizer_path()}: not a usable tokenizer ({type(e).__name__}: "
                             f"{e})") from None

    def tokenizer_path(self):
        return _os.path.join(self.path, self.meta.get("tokenizer") or "tokenizer")

    def fingerprint(self, tokenizer=None):
        """tokenizer_fingerprint of the tokenizer that made the ids (meta.json's, else computed
        from `tokenizer` or the saved one, for folders of older versions)."""
        fp = self.meta.get("tokenizer_fingerprint")
        if fp:
            return fp
        return tokenizer_fingerprint(tokenizer if tokenizer is not None else self.tokenizer())


def load_tokens(path, split="train"):
    """The ids of one split of a prepared token folder: read-only memmap (n,) uint16/uint32."""
    return TokenData(path).split(split)


def _check_tokens(tokens, block_size, who):
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise TypeError(f"{who}: tokens must be a 1-D integer NumPy array (e.g. a memmap), got "
                        f"{type(tokens).__name__} {getattr(tokens, 'shape', '')}")
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"{who}: block_size must be a positive int, got {block_size!r}")
    if len(tokens) < block_size + 1:
        raise ValueError(f"{who}: {len(tokens)} tokens cannot fill one window of block_size "
                         f"{block_size} (+1 target); use a smaller block_size or more text")


def _windows(tokens, starts, block_size):
    """(x, y) int64 Tensors (B, T): x[b] = tokens[s_b : s_b + T], y[b] = tokens[s_b + 1 : s_b + T + 1]."""
    view = np.lib.stride_tricks.sliding_window_view(tokens, block_size + 1)
    w = view[np.asarray(starts, dtype=np.int64)].astype(np.int64)     # (B, T + 1), a copy
    x = np.ascontiguousarray(w[:, :-1])
    y = np.ascontiguousarray(w[:, 1:])
    return Tensor.from_numpy(x), Tensor.from_numpy(y)


class TokenBatches:
    """Random windows of a token array, as nanoGPT's get_batch: each batch draws B start
    positions uniformly in [0, n - T) and returns (x, y), int64 Tensors of shape (B, T) with
    y the next token of each x (y[b, t] = tokens[s_b + t + 1]).

    The starts come from minillm.Generator(seed): the same seed gives the same batches on any
    thread count. `state_dict()` -> {'seed', 'offset', 'batches'} (plain ints);
    load_state_dict() on a TokenBatches over the same tokens continues with exactly the batch
    the saved one would have drawn next. `next()` (or iteration, endless) draws a batch.
    """

    def __init__(self, tokens, batch_size, block_size, seed=0):
        _check_tokens(tokens, block_size, "TokenBatches")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"TokenBatches: batch_size must be a positive int, got {batch_size!r}")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.seed = seed
        self.generator = Generator(seed)
        self.batches = 0
        self._starts = np.empty(batch_size, dtype=np.int64)

    def next_starts(self):
        """The next batch's start positions, (B,) int64, advancing the stream."""
        self.generator.randint_(self._starts, 0, len(self.tokens) - self.block_size)
        self.batches += 1
        return self._starts.copy()

    def next(self):
        """The next (x, y) batch: int64 Tensors (B, T)."""
        return _windows(self.tokens, self.next_starts(), self.block_size)

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self):
        st = self.generator.get_state()
        return {"seed": st["seed"], "offset": st["offset"], "batches": self.batches}

    def load_state_dict(self, state):
        """Continue from a state_dict(); ValueError if it came from another seed."""
        if int(state["seed"]) != self.generator.initial_seed():
            raise ValueError(f"TokenBatches.load_state_dict: the state has seed {state['seed']}, "
                             f"these batches have {self.generator.initial_seed()}")
        self.generator.set_state({"seed": int(state["seed"]), "offset": int(state["offset"])})
        self.batches = int(state.get("batches", 0))


def eval_windows(tokens, batch_size, block_size, max_batches=None):
    """Deterministic evaluation windows: the non-overlapping windows tokens[k T : k T + T + 1]
    (k = 0, 1, ...), or, when max_batches * batch_size of them is fewer, that many spread evenly
    over the whole array. Yields (x, y) int64 Tensors (b, T), b = batch_size except maybe the
    last. No randomness: every evaluation sees the same tokens."""
    _check_tokens(tokens, block_size, "eval_windows")
    total = (len(tokens) - 1) // block_size
    n = total if max_batches is None else min(total, max_batches * batch_size)
    ks = (np.arange(n, dtype=np.int64) * total) // n
    starts = ks * block_size
    for lo in range(0, n, batch_size):
        yield _windows(tokens, starts[lo:lo + batch_size], block_size)


def token_byte_lengths(tokenizer):
    """(V,) int64: bytes of text each id decodes to (special tokens count 0 bytes: they stand
    for no text). Bits per byte = sum of losses in nats / (ln 2 * sum of these over the targets)."""
    V = int(tokenizer.vocab_size)
    out = np.zeros(V, dtype=np.int64)
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, dict):
        for i, b in vocab.items():
            out[i] = len(b)
        for i in getattr(tokenizer, "special_tokens", {}).values():
            out[i] = 0
        return out
    for i in range(V):
        out[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return out
