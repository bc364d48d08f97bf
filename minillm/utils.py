"""Helpers every layer of minillm may use: reading text and JSON files, file digests,
atomic writes, the default thread count. They import nothing from minillm.

JSON has one reader here (`parse_json` / `read_json`): a key that appears twice in an object
is an error naming the file, the line and the key (Python's json keeps the last silently).
"""
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time

__all__ = ["read_text", "read_json", "parse_json", "write_json", "write_bytes_atomic", "fsync_dir", "sha256_file",
           "default_num_threads", "line_of", "json_key_pattern", "process_tag", "tag_alive",
           "remove_stale", "FolderLock", "FolderBusyError", "pause_point"]


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
    """Replace `path` by `data` (bytes) at once: a temporary file .<name>.<writer>.tmp in the
    same folder, renamed over it, so a reader never sees half a file. Temporaries of earlier
    writers of `path` that were killed are removed first (remove_stale)."""
    folder, name = os.path.split(os.path.abspath(path))
    remove_stale(folder, re.escape(f".{name}.") + r"(?P<tag>\d+(?:-\d+)?)\.tmp")
    tmp = os.path.join(folder, f".{name}.{process_tag()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
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


# ---------------------------------------------------------------------- writers that may die
# A writer names its temporary files after itself (process_tag: pid and start time), so that the
# next start can tell the leftovers of a killed writer (its process is gone, or the pid now
# belongs to another process) from the files of a writer still at work.
def _start_time(pid):
    """Start time of process `pid` in clock ticks since boot (Linux /proc/<pid>/stat field 22),
    or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # the command name (field 2) is in parentheses and may hold spaces: count after it
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def process_tag(pid=None):
    """'<pid>-<start time>' of a process (this one by default), or '<pid>' where the start
    time is unknown. With the start time a tag still tells a reused pid apart."""
    pid = os.getpid() if pid is None else pid
    start = _start_time(pid)
    return f"{pid}-{start}" if start is not None else str(pid)


def tag_alive(tag):
    """True while the process named by a process_tag runs (same pid, same start time)."""
    pid, _, start = str(tag).partition("-")
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:         # alive, another user's
        pass
    return not start or _start_time(pid) in (None, start)


def remove_stale(folder, pattern, restore=None):
    """Remove the entries of `folder` whose name matches regex `pattern` (with a group `tag`,
    a process_tag) and whose writer is gone; returns their paths. restore(match) may name a
    path to move such an entry back to instead (when that path is missing)."""
    gone = []
    try:
        names = os.listdir(folder)
    except OSError:
        return gone
    for name in names:
        m = re.fullmatch(pattern, name)
        if not m or tag_alive(m.group("tag")):
            continue
        path = os.path.join(folder, name)
        back = restore(m) if restore is not None else None
        try:
            if back is not None and not os.path.exists(back):
                os.rename(path, back)
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            gone.append(path)
        except OSError:
            pass
    return gone


class FolderBusyError(RuntimeError):
    """Another live process holds the lock of a folder."""


class FolderLock:
    """An exclusive OS lock (fcntl.flock) on the file `path`, for as long as this process holds
    it: the kernel drops it when the process ends, however it ends, so a killed writer never
    leaves a folder locked. The holder's pid is written into the file for the message another
    process gets (FolderBusyError naming `what` and that pid). Taking a lock this process
    already holds counts up; release() counts down. A no-op where fcntl does not exist or the
    file system does not lock."""

    _held = {}      # real path -> [file, count]

    def __init__(self, path, what):
        self.path = os.path.realpath(path)
        self.what = what
        self.file = None

    def acquire(self):
        if self.file is not None:
            return self
        held = FolderLock._held.get(self.path)
        if held is not None:
            held[1] += 1
            self.file = held[0]
            return self
        try:
            import fcntl
        except ImportError:
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                f.close()           # a file system without flock (some network mounts): no lock
                return self
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise FolderBusyError(f"{self.what} is in use by process {holder} (it holds the lock "
                                  f"{self.path}); wait until it ends or stop it") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        FolderLock._held[self.path] = [f, 1]
        self.file = f
        return self

    def release(self):
        if self.file is None:
            return
        held = FolderLock._held.get(self.path)
        self.file = None
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del FolderLock._held[self.path]
            held[0].close()         # closing the file drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def folder_temp(out):
    """(tmp, tag) for writing the folder `out` whole before replace_folder puts it in place:
    tmp = the hidden `.NAME.TAG.tmp` beside `out` (TAG this process's process_tag(), the folder
    itself not made), after removing what a killed writer of `out` left there (its `.tmp`, and
    its `.old`, moved back to `out` when `out` is missing). Makes `out`'s parent."""
    parent, base = os.path.split(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent, re.escape(f".{base}.") + r"(?P<tag>\d+(?:-\d+)?)\.(?P<kind>tmp|old)",
                 lambda m: os.path.join(parent, base) if m.group("kind") == "old" else None)
    tag = process_tag()
    tmp = os.path.join(parent, f".{base}.{tag}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp, tag


def replace_folder(tmp, out, tag):
    """Put the finished folder `tmp` at `out`. An existing `out` is renamed aside first (a
    hidden `.NAME.TAG.old` beside it, TAG the writer's process_tag(), so a killed writer's
    leftover is recognised and restored by remove_stale) and deleted after: at every moment
    `out` is the old folder or the new one."""
    if os.path.isdir(out):
        parent, base = os.path.split(os.path.abspath(out))
        old = os.path.join(parent, f".{base}.{tag}.old")
        os.rename(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def pause_point(name):
    """Test hook: when $MINILLM_PAUSE_AT is `name`, say so on stderr and sleep, so that a test
    can kill this process at a known point of a write (tests/test_reliability.py)."""
    if os.environ.get("MINILLM_PAUSE_AT") == name:
        print(f"minillm: paused at {name}", file=sys.stderr, flush=True)
        time.sleep(600)
