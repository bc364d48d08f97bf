# Runtime: CPU dispatch, threads, allocator statistics.

C.mll_init()


def cpu_info():
    """Which ISA path is active and what this CPU can run: a dict."""
    return {
        "cpu": C.mll_cpu_name().decode("ascii", "replace"),
        "isa": C.mll_isa_name(C.mll_get_isa()).decode(),
        "supported": [C.mll_isa_name(i).decode() for i in range(3) if C.mll_cpu_supports(i)],
        "avx512_bf16": bool(C.mll_cpu_has_avx512bf16()),
        "avx512_vnni": bool(C.mll_cpu_has_avx512vnni()),
        "amd": bool(C.mll_cpu_is_amd()),             # the vendor (kernels tuned per vendor)
        "num_threads": C.mll_get_num_threads(),
    }


_ISA_NAMES = {"generic": C.MLL_ISA_GENERIC, "avx2": C.MLL_ISA_AVX2, "avx512": C.MLL_ISA_AVX512}


def set_isa(name):
    """Force a kernel path ('generic', 'avx2', 'avx512'); ValueError if the CPU lacks it."""
    if name not in _ISA_NAMES:
        raise ValueError(f"unknown ISA {name!r}: expected one of {sorted(_ISA_NAMES)}")
    if C.mll_set_isa(_ISA_NAMES[name]) != 0:
        raise ValueError(f"this CPU cannot run the {name!r} kernels")


def set_vnni(on):
    """Whether int8 decoding products use AVX512-VNNI on the avx512 path (default: where the CPU
    has it). Off, they run on plain AVX-512 with the same results; ValueError to turn it on
    where the CPU lacks it."""
    if C.mll_set_vnni(1 if on else 0) != 0:
        raise ValueError("this CPU has no AVX512-VNNI")


def get_vnni():
    """True if the CPU has AVX512-VNNI and set_vnni has not switched it off (the int8 products
    then use it whenever the avx512 path is selected)."""
    return bool(C.mll_get_vnni())


def set_bf16_x(on):
    """Whether bf16 decoding products round x to bf16 too and sum with AVX512-BF16's VDPBF16PS
    on the avx512 path (default: where the CPU has it; half the arithmetic of widening every
    weight, which a batch multiplies). Off, x stays float32 (other results, to rounding);
    ValueError to turn it on where the CPU lacks it."""
    if C.mll_set_bf16_x(1 if on else 0) != 0:
        raise ValueError("this CPU has no AVX512-BF16")


def get_bf16_x():
    """True if the CPU has AVX512-BF16 and set_bf16_x has not switched it off."""
    return bool(C.mll_get_bf16_x())


def get_isa():
    return C.mll_isa_name(C.mll_get_isa()).decode()


def supported_isas():
    return [C.mll_isa_name(i).decode() for i in range(3) if C.mll_cpu_supports(i)]


MAX_THREADS = 4096


def set_num_threads(n):
    """Number of OpenMP threads the kernels use (1 <= n <= MAX_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"num_threads must be an int in [1, {MAX_THREADS}], got {n!r}")
    C.mll_set_num_threads(n)


def get_num_threads():
    return C.mll_get_num_threads()


def alloc_stats():
    """(bytes in use, bytes cached in free lists, allocations from the OS so far)."""
    cdef int64_t a, b, c
    C.mll_alloc_stats(&a, &b, &c)
    return {"in_use": a, "cached": b, "os_allocs": c}
