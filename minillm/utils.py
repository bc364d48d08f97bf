"""Helpers every layer of minillm may use: reading text and JSON files, file digests,
atomic writes, the default thread count. They import nothing from minillm.

JSON has one reader here (`parse_json` / `read_json`): a key that appears twice in an object
is an error naming the file, the line and the key (Python's json keeps the last silently).
"""
import hashlib
import json
import os
import re
import tempfile

__all__ = ["read_text", "read_json", "parse_json", "write_json", "write_bytes_atomic", "fsync_dir", "sha256_file",
           "default_num_threads", "line_of", "json_key_pattern"]


def read_text(path):
    """Contents of a UTF-8 text file; a clear ValueError names the file on bad bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path} line {line}: not valid UTF-8 ({e.reason})") from None


class _DuplicateKey(Exception):
    def __init__(self, key):
        self.key = key


def _no_duplicate_keys(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def line_of(text, pattern, start=0):
    """1-based line of the first match of regex `pattern` in `text` at or after `start`, or None."""
    m = re.compile(pattern).search(text, start)
    return text.count("\n", 0, m.start()) + 1 if m else None


def json_key_pattern(key):
    """Regex matching `key` as a JSON string however it was escaped (raw or \\uXXXX)."""
    forms = {json.dumps(key), json.dumps(key, ensure_ascii=False)}
    return "(?:" + "|".join(re.escape(f) for f in forms) + ")"


def parse_json(text, source):
    """The value of JSON `text` (str); `source` (a file name) starts every error message.
    Bad JSON raises ValueError "<source> line N: bad JSON (...)"; a key repeated within one
    object raises ValueError "<source> line N: duplicate key 'k'" (N: its second occurrence)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} line {e.lineno}: bad JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:     # e.g. an integer of more than 4300 digits
        raise ValueError(f"{source}: bad JSON ({e or 'nested too deeply'})") from None
    except _DuplicateKey as e:
        starts = [m.start() for m in re.finditer(json_key_pattern(e.key) + r"\s*:", text)]
        where = f" line {text.count(chr(10), 0, starts[1]) + 1}" if len(starts) > 1 else ""
        raise ValueError(f"{source}{where}: duplicate key {e.key!r}") from None


def read_json(path):
    """The parsed JSON of the UTF-8 file `path`; ValueError names the file and line on bad
    bytes, bad JSON or a duplicate key (see parse_json)."""
    return parse_json(read_text(path), os.fspath(path))


def write_json(path, obj):
    """Write obj as indented JSON to `path` and fsync it (the caller renames it into place)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path, data):
    """Replace `path` by `data` (bytes) at once: a temporary file in the same folder, renamed
    over it, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)    # mkstemp makes 0600; these are ordinary data files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fsync_dir(folder):
    """fsync a folder so a rename inside it is durable (a no-op where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path):
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_num_threads():
    """Threads for encoding and tokenizer training: MINILLM_NUM_THREADS, else the cores this
    process may use."""
    env = os.environ.get("MINILLM_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"MINILLM_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"MINILLM_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
