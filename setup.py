"""Build script: one extension for the tensor engine, one for the BPE tokenizer.

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
ENGINE_SOURCES = sorted(s for s in glob.glob("csrc/*.c") if s not in BPE_SOURCES)


def ext(name, sources):
    return Extension(
        name,
        sources=sources,
        include_dirs=["csrc", "pyx", numpy.get_include()],
        extra_compile_args=CFLAGS,
        extra_link_args=LDFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        depends=glob.glob("csrc/*.h"),  # a header-only change (csrc/simd.h) must rebuild too
    )


extensions = [ext("minillm._C", ["pyx/_C.pyx"] + ENGINE_SOURCES)]
if os.path.exists("pyx/_bpe.pyx"):
    extensions.append(ext("minillm._bpe", ["pyx/_bpe.pyx"] + BPE_SOURCES))

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3,
                             "cdivision": True, "initializedcheck": False},
        include_path=["pyx"],
    ),
)
