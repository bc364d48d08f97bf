# cython: language_level=3
"""minillm._bpe: the BPE of csrc/bpe.c (pre-tokenizers, trainer, encoder).

Text crosses this boundary as UTF-8 `bytes`; ids as numpy uint32 arrays. The GIL is
released while C works.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t
import operator

import numpy as np
cimport numpy as cnp
from cpython.list cimport PyList_New, PyList_SET_ITEM, PyList_GET_ITEM
from cpython.ref cimport Py_INCREF, PyObject

cnp.import_array()

cdef extern from "minillm.h" nogil:
    int64_t mll_bpe_pretoken_end(const uint8_t *s, int64_t i, int64_t n)
    int64_t mll_bpe_pretokenize(const uint8_t *s, int64_t n, int64_t *ends)
    int64_t mll_bpe_split(const int *steps, int nsteps, const uint8_t *s, int64_t n, int64_t *ends)
    enum:
        MLL_SPLIT_GPT2, MLL_SPLIT_LLAMA3, MLL_SPLIT_QWEN2, MLL_SPLIT_DIGITS,
        MLL_SPLIT_DIGIT_RUNS, MLL_SPLIT_METASPACE, MLL_BPE_MAX_STEPS
    ctypedef struct mll_bpe_options:
        int chars, ignore_merges, byte_fallback, fuse_unk
        int64_t unk_id
        int nsteps
        int steps[8]

    ctypedef struct mll_bpe_counter:
        pass
    mll_bpe_counter *mll_bpe_counter_new()
    void mll_bpe_counter_free(mll_bpe_counter *c)
    int mll_bpe_counter_add(mll_bpe_counter *c, const uint8_t *text, int64_t n, int nthreads)
    int64_t mll_bpe_counter_size(const mll_bpe_counter *c)
    int64_t mll_bpe_counter_total(const mll_bpe_counter *c)

    ctypedef struct mll_bpe_trainer:
        pass
    mll_bpe_trainer *mll_bpe_trainer_new(const mll_bpe_counter *c, uint32_t first_id)
    int64_t mll_bpe_trainer_step(mll_bpe_trainer *t, int64_t max_merges, uint32_t *pairs_out,
                                 int64_t *counts_out)
    void mll_bpe_trainer_free(mll_bpe_trainer *t)

    ctypedef struct mll_bpe:
        pass
    mll_bpe *mll_bpe_new(const uint32_t *merges, int64_t n_merges, const uint32_t *byte_ids,
                         const uint8_t *vocab_bytes, const int64_t *vocab_offsets,
                         int64_t vocab_size, const uint8_t *in_model,
                         const mll_bpe_options *options)
    void mll_bpe_free(mll_bpe *t)
    int64_t mll_bpe_encode(const mll_bpe *t, const uint8_t *text, int64_t n, uint32_t *out,
                           int nthreads)
    int64_t mll_bpe_encode_batch(const mll_bpe *t, const uint8_t *text, const int64_t *offsets,
                                 int64_t n_texts, uint32_t *out, int64_t *out_offsets,
                                 int nthreads)
    int64_t mll_bpe_decoded_length(const mll_bpe *t, const uint32_t *ids, int64_t n)
    int64_t mll_bpe_decode(const mll_bpe *t, const uint32_t *ids, int64_t n, uint8_t *out)


# names of the pre-tokenizer steps of csrc/bpe.c
SPLIT_STEPS = {"gpt2": MLL_SPLIT_GPT2, "llama3": MLL_SPLIT_LLAMA3, "qwen2": MLL_SPLIT_QWEN2,
               "digits": MLL_SPLIT_DIGITS, "digit_runs": MLL_SPLIT_DIGIT_RUNS,
               "metaspace": MLL_SPLIT_METASPACE}


cdef _fill_steps(mll_bpe_options *opt, steps):
    steps = list(steps)
    if len(steps) > MLL_BPE_MAX_STEPS:
        raise ValueError(f"bpe: at most {MLL_BPE_MAX_STEPS} pre-tokenizer steps, got {len(steps)}")
    for k, name in enumerate(steps):
        if name not in SPLIT_STEPS:
            raise ValueError(f"bpe: unknown pre-tokenizer step {name!r}; known: {sorted(SPLIT_STEPS)}")
        opt.steps[k] = SPLIT_STEPS[name]
    opt.nsteps = len(steps)


def pretokenize(bytes text, steps=("gpt2",)):
    """Pre-tokens of UTF-8 `text` after the chain of `steps` (names of SPLIT_STEPS; default
    GPT-2's pattern), as a list of bytes objects."""
    cdef mll_bpe_options opt
    _fill_steps(&opt, steps)
    cdef const uint8_t *s = text
    cdef int64_t n = len(text), k
    cdef cnp.ndarray[int64_t, ndim=1] ends = np.empty(max(n, 1), dtype=np.int64)
    with nogil:
        k = mll_bpe_split(opt.steps, opt.nsteps, s, n, <int64_t *>ends.data)
    out = []
    cdef int64_t start = 0, i
    for i in range(k):
        out.append(text[start:ends[i]])
        start = ends[i]
    return out


cdef class WordCounter:
    """Unique pre-tokens of the texts added so far, with their counts (training, step 1)."""
    cdef mll_bpe_counter *c

    def __cinit__(self):
        self.c = mll_bpe_counter_new()
        if self.c == NULL:
            raise MemoryError("bpe: cannot allocate the word counter")

    def __dealloc__(self):
        mll_bpe_counter_free(self.c)

    def add(self, bytes text, int nthreads=1):
        """Count the pre-tokens of UTF-8 `text` (split over `nthreads` threads when long)."""
        cdef const uint8_t *s = text
        cdef int64_t n = len(text)
        cdef int rc
        with nogil:
            rc = mll_bpe_counter_add(self.c, s, n, nthreads)
        if rc < 0:
            raise MemoryError("bpe: out of memory while counting words")

    @property
    def unique(self):
        return mll_bpe_counter_size(self.c)

    @property
    def total(self):
        return mll_bpe_counter_total(self.c)


cdef class Trainer:
    """BPE merges over a WordCounter's words (training, step 2); merge k makes id first_id + k."""
    cdef mll_bpe_trainer *t
    cdef object counter      # keeps nothing alive in C, but documents the origin

    def __cinit__(self, WordCounter counter, uint32_t first_id=256):
        self.t = mll_bpe_trainer_new(counter.c, first_id)
        if self.t == NULL:
            raise MemoryError("bpe: cannot allocate the trainer")

    def __dealloc__(self):
        mll_bpe_trainer_free(self.t)

    def step(self, int64_t max_merges):
        """Do up to `max_merges` merges; returns (pairs (k, 2) uint32, counts (k,) int64)."""
        pairs = np.empty((max(max_merges, 0), 2), dtype=np.uint32)
        counts = np.empty(max(max_merges, 0), dtype=np.int64)
        cdef cnp.ndarray pa = pairs, ca = counts
        cdef int64_t k
        with nogil:
            k = mll_bpe_trainer_step(self.t, max_merges, <uint32_t *>pa.data,
                                     <int64_t *>ca.data)
        if k < 0:
            raise MemoryError("bpe: out of memory while training")
        return pairs[:k], counts[:k]


cdef class Encoder:
    """Encoder/decoder for fixed merges (n, 3) = (left, right, merged) uint32, byte ids (256,)
    (UINT32_MAX: no token) and a vocabulary given as concatenated bytes with offsets (V + 1,)
    int64. The keywords are csrc/minillm.h's mll_bpe_options (default: GPT-2's byte-level
    BPE); in_model (V,) bool marks the tokens looked up as characters or whole words."""
    cdef mll_bpe *t
    cdef readonly int64_t vocab_size

    def __cinit__(self, merges, byte_ids, bytes vocab_bytes, vocab_offsets, *,
                  steps=("gpt2",), bint chars=False, bint ignore_merges=False,
                  bint byte_fallback=False, bint fuse_unk=False, int64_t unk_id=-1,
                  in_model=None):
        cdef cnp.ndarray m = np.ascontiguousarray(merges, dtype=np.uint32).reshape(-1, 3)
        cdef cnp.ndarray b = np.ascontiguousarray(byte_ids, dtype=np.uint32)
        cdef cnp.ndarray o = np.ascontiguousarray(vocab_offsets, dtype=np.int64)
        cdef cnp.ndarray im
        cdef const uint8_t *im_ptr = NULL
        cdef mll_bpe_options opt
        if b.shape[0] != 256:
            raise ValueError(f"bpe: expected 256 byte ids, got {b.shape[0]}")
        if o.shape[0] < 2 or o[o.shape[0] - 1] != len(vocab_bytes) or o[0] != 0:
            raise ValueError("bpe: vocabulary offsets do not match the vocabulary bytes")
        self.vocab_size = o.shape[0] - 1
        if in_model is not None:
            im = np.ascontiguousarray(in_model, dtype=np.uint8)
            if im.shape[0] != self.vocab_size:
                raise ValueError(f"bpe: in_model has {im.shape[0]} entries for a vocabulary "
                                 f"of {self.vocab_size}")
            im_ptr = <const uint8_t *>im.data
        _fill_steps(&opt, steps)
        opt.chars, opt.ignore_merges = chars, ignore_merges
        opt.byte_fallback, opt.fuse_unk, opt.unk_id = byte_fallback, fuse_unk, unk_id
        if unk_id >= self.vocab_size:
            raise ValueError(f"bpe: unk id {unk_id} is outside the vocabulary of {self.vocab_size}")
        self.t = mll_bpe_new(<const uint32_t *>m.data, m.shape[0], <const uint32_t *>b.data,
                             <const uint8_t *>vocab_bytes, <const int64_t *>o.data,
                             self.vocab_size, im_ptr, &opt)
        if self.t == NULL:
            raise ValueError(f"bpe: an id in the merges or byte ids is outside the vocabulary "
                             f"of {self.vocab_size} (or out of memory)")

    def __dealloc__(self):
        mll_bpe_free(self.t)

    def encode(self, bytes text, int nthreads=1):
        """Ids (k,) uint32 of UTF-8 `text`."""
        cdef const uint8_t *s = text
        cdef int64_t n = len(text), k
        out = np.empty(max(n, 1), dtype=np.uint32)
        cdef cnp.ndarray oa = out
        with nogil:
            k = mll_bpe_encode(self.t, s, n, <uint32_t *>oa.data, nthreads)
        if k < 0:
            raise MemoryError("bpe: out of memory while encoding (or a pre-token over 2 GiB)")
        return out[:k].copy() if 4 * k < n else out[:k]

    def encode_batch(self, texts, int nthreads=1):
        """All ids of a list of UTF-8 bytes, (total,) uint32, and offsets (len(texts) + 1,)
        int64: text i has ids[offsets[i]:offsets[i + 1]]."""
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return self.encode_joined(b"".join(texts), offsets, nthreads)

    def encode_joined(self, bytes joined, offsets, int nthreads=1):
        """Like encode_batch for texts already joined: text i is
        joined[offsets[i]:offsets[i + 1]], offsets (n + 1,) int64 from 0 to len(joined)."""
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 \
                or offsets[-1] != len(joined) or (offsets.shape[0] > 1
                                                  and np.any(np.diff(offsets) < 0)):
            raise ValueError(f"offsets must rise from 0 to {len(joined)}")
        out = np.empty(max(len(joined), 1), dtype=np.uint32)
        out_offsets = np.empty(offsets.shape[0], dtype=np.int64)
        cdef cnp.ndarray oa = out, ofa = offsets, oofa = out_offsets
        cdef const uint8_t *s = joined
        cdef int64_t ntexts = offsets.shape[0] - 1, k
        with nogil:
            k = mll_bpe_encode_batch(self.t, s, <const int64_t *>ofa.data, ntexts,
                                     <uint32_t *>oa.data, <int64_t *>oofa.data, nthreads)
        if k < 0:
            raise MemoryError("bpe: out of memory while encoding")
        return out[:k], out_offsets

    def decode(self, ids):
        """UTF-8 bytes of ids (any integer sequence); ValueError names a bad id."""
        cdef cnp.ndarray a
        if isinstance(ids, np.ndarray) and ids.dtype == np.uint32 and ids.flags.c_contiguous:
            a = ids.reshape(-1)
        elif isinstance(ids, list):
            a = ids_from_list(ids, self.vocab_size)
        else:
            arr = np.asarray(ids)
            if arr.size and (arr.dtype.kind not in "iu"):
                raise TypeError(f"expected integer token ids, got dtype {arr.dtype}")
            arr = arr.reshape(-1)
            if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
                bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
                raise ValueError(f"token id {bad} is outside the vocabulary "
                                 f"(size {self.vocab_size})")
            a = np.ascontiguousarray(arr, dtype=np.uint32)
        cdef int64_t n = a.shape[0], length
        with nogil:
            length = mll_bpe_decoded_length(self.t, <const uint32_t *>a.data, n)
        if length < 0:
            raise ValueError(f"token id {int(a[-length - 1])} is not in the vocabulary "
                             f"(size {self.vocab_size})")
        out = bytearray(length)
        cdef uint8_t *o = out
        with nogil:
            mll_bpe_decode(self.t, <const uint32_t *>a.data, n, o)
        return bytes(out)


cdef inline list _take(const uint32_t *p, Py_ssize_t n, list ints):
    """[ints[p[0]], ..., ints[p[n - 1]]]: shares the int objects instead of making new ones."""
    cdef list out = PyList_New(n)
    cdef Py_ssize_t j
    cdef PyObject *o
    for j in range(n):
        o = PyList_GET_ITEM(ints, p[j])
        Py_INCREF(<object>o)
        PyList_SET_ITEM(out, j, <object>o)
    return out


def ids_to_list(ids, list ints):
    """list[int] of ids (n,) uint32; `ints` is list(range(vocab_size)) (every id < its length)."""
    cdef cnp.ndarray a = np.ascontiguousarray(ids, dtype=np.uint32)
    _check_ids(a, len(ints))
    return _take(<const uint32_t *>a.data, a.shape[0], ints)


def split_ids(ids, offsets, list ints):
    """list[list[int]]: ids[offsets[i]:offsets[i + 1]] for each i (see ids_to_list for `ints`)."""
    cdef cnp.ndarray a = np.ascontiguousarray(ids, dtype=np.uint32)
    cdef cnp.ndarray o = np.ascontiguousarray(offsets, dtype=np.int64)
    _check_ids(a, len(ints))
    if o.shape[0] < 1 or o[0] != 0 or o[o.shape[0] - 1] != a.shape[0]:
        raise ValueError(f"offsets must rise from 0 to {a.shape[0]}")
    cdef const uint32_t *p = <const uint32_t *>a.data
    cdef const int64_t *q = <const int64_t *>o.data
    cdef Py_ssize_t n = o.shape[0] - 1, i
    cdef list result = PyList_New(n)
    cdef list sub
    for i in range(n):
        if q[i + 1] < q[i]:
            raise ValueError("offsets must not decrease")
        sub = _take(p + q[i], q[i + 1] - q[i], ints)
        Py_INCREF(sub)
        PyList_SET_ITEM(result, i, sub)
    return result


cdef _check_ids(cnp.ndarray a, Py_ssize_t size):
    cdef const uint32_t *p = <const uint32_t *>a.data
    cdef Py_ssize_t i, n = a.shape[0]
    cdef uint32_t worst = 0
    for i in range(n):
        if p[i] > worst:
            worst = p[i]
    if n and worst >= size:
        raise ValueError(f"token id {worst} is outside the vocabulary (size {size})")


def ids_from_list(ids, int64_t vocab_size):
    """(n,) uint32 array of a sequence of Python ints, each checked to be in [0, vocab_size)."""
    cdef Py_ssize_t n = len(ids), i
    out = np.empty(n, dtype=np.uint32)
    cdef cnp.ndarray oa = out
    cdef uint32_t *o = <uint32_t *>oa.data
    cdef long long v
    if isinstance(ids, list):
        for i in range(n):
            item = <object>PyList_GET_ITEM(ids, i)
            if type(item) is not int:
                try:
                    item = operator.index(item)     # numpy integers yes, floats no
                except TypeError:
                    raise TypeError(f"token ids must be integers, got {item!r} at {i}") from None
            try:
                v = item
            except OverflowError:
                raise ValueError(f"token id {item} is outside the vocabulary "
                                 f"(size {vocab_size})") from None
            if v < 0 or v >= vocab_size:
                raise ValueError(f"token id {v} is outside the vocabulary (size {vocab_size})")
            o[i] = <uint32_t>v
        return out
    for i in range(n):
        v = ids[i]
        if v < 0 or v >= vocab_size:
            raise ValueError(f"token id {v} is outside the vocabulary (size {vocab_size})")
        o[i] = <uint32_t>v
    return out
