/* dispatch.h: how a csrc/ kernel gets one version per instruction set, and how one of them
 * is picked at run time (internal; not part of the C API). Every kernel file does it this way.
 *
 * A kernel file has two halves and is read by the compiler three times. The first time
 * (MLL_VEC not defined) it compiles the top half: the portable versions, the public entry
 * points, and, where the SIMD versions must be known, an #include of this header. This header
 * includes the file again with MLL_VEC = 256 and then with MLL_VEC = 512; those two times the
 * compiler sees only the bottom half, with simd.h's vector vocabulary mapped to AVX2+FMA and
 * then to AVX-512:
 *
 *     // softmax.c
 *     #ifndef MLL_VEC                                // top half: compiled once
 *     #include "simd.h"
 *     static void softmax_row_generic(const float *x, float *y, int64_t n) { ... }
 *
 *     #define MLL_DISPATCH_SELF "softmax.c"
 *     #include "dispatch.h"                          // the bottom half, once per ISA, here
 *
 *     void mll_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols) {
 *         void (*row)(const float *, float *, int64_t) = MLL_PICK(softmax_row);
 *         ...
 *     }
 *     #else                                          // bottom half: once per ISA
 *     static MLL_TARGET void FN(softmax_row)(const float *x, float *y, int64_t n) {
 *         ... V, VL, v_load, v_exp, VLOOP1 (simd.h) ...
 *     }
 *     #endif
 *
 * So a kernel `name` has three versions: name_generic, written in the top half, and FN(name),
 * written once in the bottom half, which is name_avx2 in the first pass and name_avx512 in
 * the second. MLL_TARGET gives each its target attribute (MLL_AVX2, MLL_AVX512), so only
 * these functions use the wider instructions and the build as a whole stays baseline
 * x86-64. A bottom half is either written on the vector vocabulary (softmax.c, reduce.c, ...)
 * or wraps an always_inline loop body of the top half, which the compiler then vectorizes for
 * each target (loss.c, optim.c, rng.c). Types, constants and inline helpers that both halves
 * use go in the top half above the #include of this header.
 *
 * Adding a kernel to a file: write name_generic in the top half, FN(name) in the bottom half,
 * and call MLL_PICK(name) where it runs. A new kernel file takes the layout above.
 *
 * The pick: MLL_PICK(name) is name_avx512, name_avx2 or name_generic for mll_get_isa() at the
 * moment it runs (runtime.c: the best the CPU has, or MINILLM_ISA, or mll_set_isa()), so a
 * change of ISA takes effect at the next call. Use it once per public call, outside the loops. It
 * picks functions and objects alike (`&MLL_PICK(params)` for a table, as gemm.c does); the
 * three versions must have the same type.
 *
 * Set before including this header:
 *   MLL_DISPATCH_SELF     the file's own name, in quotes: the file included again per pass.
 *                         Left undefined, no pass is compiled and only MLL_PICK is defined:
 *                         for gemm.c, whose passes are files of their own (below).
 *   MLL_DISPATCH_MAX_VEC  256: the file has no AVX-512 pass, and AVX-512 machines use its
 *                         AVX2 version. Default 512. rng.c does this: its AVX2 version is
 *                         built without FMA (MLL_AVX2_NO_FMA, not MLL_TARGET) so that it
 *                         rounds exactly as the generic one; an AVX-512 target always
 *                         lets gcc fuse a multiply and an add.
 * On a compiler for another architecture, or with -DMLL_NO_SIMD, no pass is compiled and
 * MLL_PICK(name) is always name_generic.
 *
 * GEMM's micro-kernels keep the passes in files of their own: gemm_generic.c, gemm_avx2.c and
 * gemm_avx512.c each hold one register tile written for one register file (4 x 16 in plain C,
 * 6 x 16 and 14 x 32 in intrinsics) and share no text, so one file with `#if MLL_VEC == 512`
 * around each would only glue them together. Each per-ISA file sets MLL_VEC and includes
 * simd.h itself, which makes it what a bottom half sees in that pass (FN, MLL_TARGET), and
 * gemm.c picks among them with MLL_PICK like every other file.
 *
 * One kernel has no version to pick between: gemm_bf16.c's bf16 GEMM runs on the AVX512-BF16
 * dot-product instruction or not at all. It asks mll_gemm_bf16_native() (that CPU feature, and
 * the AVX-512 ISA selected) and otherwise rounds its operands to bf16 and runs the float32 GEMM,
 * which dispatches as above.
 */
#ifndef MLL_DISPATCH_MAX_VEC
#define MLL_DISPATCH_MAX_VEC 512
#endif

#if defined(MLL_X86) && defined(MLL_DISPATCH_SELF)
#define MLL_VEC 256
#include "simd.h"
#include MLL_DISPATCH_SELF
#undef MLL_VEC
#if MLL_DISPATCH_MAX_VEC >= 512
#define MLL_VEC 512
#include "simd.h"
#include MLL_DISPATCH_SELF
#undef MLL_VEC
#endif
#include "simd.h" /* MLL_VEC unset again: the vocabulary (V, VL, FN, v_*) ends with the passes */
#endif

/* (*&f) is f again, and (*&table) an lvalue, so one form serves functions and tables */
#if !defined(MLL_X86)
#define MLL_PICK(name) (name##_generic)
#elif MLL_DISPATCH_MAX_VEC >= 512
#define MLL_PICK(name)                                                                             \
    (*(mll_get_isa() == MLL_ISA_AVX512 ? &name##_avx512                                            \
       : mll_get_isa() == MLL_ISA_AVX2 ? &name##_avx2                                              \
                                       : &name##_generic))
#else
#define MLL_PICK(name) (*(mll_get_isa() >= MLL_ISA_AVX2 ? &name##_avx2 : &name##_generic))
#endif
