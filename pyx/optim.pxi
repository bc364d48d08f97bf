# optim.pxi: bindings of optim.c: the fused SGD and Adam/AdamW steps, in place.


def sgd_step_(param, grad, buf, float lr, float momentum=0.0, float dampening=0.0,
              float weight_decay=0.0, bint nesterov=False, bint first_step=True):
    """One fused SGD update, in place on param and buf (the momentum buffer, None when
    momentum is 0). All float32, same shape; param and buf contiguous."""
    cdef Tensor p = as_inplace_f32(param, "sgd_step_")
    cdef Tensor g = as_contig(as_f32(grad, "sgd_step_"))
    check_same_numel(p, g, "sgd_step_", "param", "grad")
    cdef float *bp = NULL
    cdef Tensor b
    if buf is not None:
        b = as_inplace_f32(buf, "sgd_step_")
        check_same_numel(p, b, "sgd_step_", "param", "momentum buffer")
        bp = fptr(b)
    elif momentum != 0.0:
        raise ValueError("sgd_step_: momentum != 0 needs a momentum buffer")
    cdef float *pp = fptr(p)
    cdef const float *gp = fptr(g)
    cdef int64_t n = numel(p)
    with nogil:
        C.mll_sgd_step(pp, gp, bp, n, lr, momentum, dampening, weight_decay, nesterov, first_step)


def adam_step_(param, grad, exp_avg, exp_avg_sq, float lr, float beta1, float beta2, float eps,
               float weight_decay, bint decoupled, int64_t step):
    """One fused Adam (decoupled False) or AdamW (decoupled True) update, in place on
    param, exp_avg and exp_avg_sq. All float32, same shape, contiguous; step >= 1."""
    if step < 1:
        raise ValueError(f"adam_step_: step must be >= 1, got {step}")
    cdef Tensor p = as_inplace_f32(param, "adam_step_")
    cdef Tensor g = as_contig(as_f32(grad, "adam_step_"))
    cdef Tensor m = as_inplace_f32(exp_avg, "adam_step_")
    cdef Tensor v = as_inplace_f32(exp_avg_sq, "adam_step_")
    check_same_numel(p, g, "adam_step_", "param", "grad")
    check_same_numel(p, m, "adam_step_", "param", "exp_avg")
    check_same_numel(p, v, "adam_step_", "param", "exp_avg_sq")
    cdef float *pp = fptr(p)
    cdef const float *gp = fptr(g)
    cdef float *mp = fptr(m)
    cdef float *vp = fptr(v)
    cdef int64_t n = numel(p)
    with nogil:
        C.mll_adam_step(pp, gp, mp, vp, n, lr, beta1, beta2, eps, weight_decay, decoupled, step)
