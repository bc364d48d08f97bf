"""Build script: one extension for the tensor engine (minillm._C), one for the BPE tokenizer
(minillm._bpe) and one of raw kernel bindings for the tests and benchmarks (minillm._testing).

All C sources under csrc/ are plain C11 with OpenMP; the hot kernels carry per-function
target attributes (AVX2+FMA, AVX-512) and are chosen at import, so the default build
never uses -march=native and the wheel runs on any x86-64 (and compiles on ARM).
"""
import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

CFLAGS = ["-O3", "-std=gnu11", "-fopenmp", "-fno-math-errno", "-Wall", "-Wextra"]
LDFLAGS = ["-fopenmp"]
if os.environ.get("MINILLM_DEBUG"):
    CFLAGS += ["-g", "-O1", "-fno-omit-frame-pointer"]

BPE_SOURCES = ["csrc/bpe.c"]
TEST_ONLY_SOURCES = ["csrc/matmul_ref.c"]
ENGINE_SOURCES = sorted(s for s in glob.glob("csrc/*.c") if s not in BPE_SOURCES + TEST_ONLY_SOURCES)


# The engine's kernels are compiled once, into a static library that each extension links
# (each gets its own copy of the code it uses).
ENGINE_LIB = ("minillm_kernels", {
    "sources": ENGINE_SOURCES + TEST_ONLY_SOURCES,
    "include_dirs": ["csrc"],
    "cflags": CFLAGS,
    "obj_deps": {"": glob.glob("csrc/*.h")},  # a header-only change (csrc/simd.h) rebuilds too
})


def ext(name, sources, libraries=()):
    return Extension(
        name,
        sources=sources,
        include_dirs=["csrc", "pyx", numpy.get_include()],
        libraries=list(libraries),
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=glob.glob("csrc/*.[ch]"),  # relinked when a kernel changes
    )


extensions = [ext("minillm._C", ["pyx/_C.pyx"], ["minillm_kernels"]),
              ext("minillm._testing", ["pyx/_testing.pyx"], ["minillm_kernels"])]
if os.path.exists("pyx/_bpe.pyx"):
    extensions.append(ext("minillm._bpe", ["pyx/_bpe.pyx"] + BPE_SOURCES))

setup(
    libraries=[ENGINE_LIB],
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3,
                             "cdivision": True, "initializedcheck": False},
        include_path=["pyx"],
    ),
)
