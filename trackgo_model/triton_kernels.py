"""Triton kernels of :mod:`trackgo_model.fused_attention` (imported on first use; see there).

Triton resolves the functions a kernel calls among this module's globals. ``INTERP`` marks a run
in Triton's interpreter (CPU tensors), whose bf16 products are wrong (see :func:`_dot`).
"""
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, INTERP: tl.constexpr):
    """a·b with fp32 accumulation. Under the interpreter (INTERP), whose bf16 products are wrong,
    fp32 copies are multiplied instead: bf16 values are exact in fp32, so the result is the same."""
    if INTERP:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        r = tl.dot(a, b, input_precision=PRECISION)
    return r


@triton.jit
def _load(ptr, base, s_f, rf, rd, mask):
    return tl.load(ptr + base + rf[:, None] * s_f + rd[None, :], mask=mask, other=0.0)


@triton.jit
def _maps(q, k, qp, kp, cols, alpha, gap, scale, PRECISION: tl.constexpr, INTERP: tl.constexpr):
    """(A′, hit, A) of one sequence, (BF, BF) each; padded columns are exact zeros."""
    neg = float("-inf")
    sp = _dot(qp, tl.trans(kp), PRECISION, INTERP) * scale
    sp = tl.where(cols, sp, neg)
    ep = tl.exp(sp - tl.max(sp, 1)[:, None])
    ap = ep / tl.sum(ep, 1)[:, None]
    hit = (ap >= alpha) & cols
    hg = tl.where(hit, gap, 0.0)
    am = hg - tl.max(tl.where(cols, hg, neg), 1)[:, None]
    s = _dot(q, tl.trans(k), PRECISION, INTERP) * scale + am
    s = tl.where(cols, s, neg)
    e = tl.exp(s - tl.max(s, 1)[:, None])
    a = e / tl.sum(e, 1)[:, None]
    return ap, hit, a


@triton.jit
def track_attention_fwd(Q, K, V, QP, KP, G, O, DIAG, NHIT,
                        s_q0, s_q1, s_q2, s_k0, s_k1, s_k2, s_v0, s_v1, s_v2,
                        s_qp0, s_qp1, s_qp2, s_kp0, s_kp1, s_kp2, s_o0, s_o1, s_o2,
                        n_seq, H, F, D, alpha, gap, scale,
                        BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, SEQ: tl.constexpr, USE_GATE: tl.constexpr,
                        WANT_DIAG: tl.constexpr, WANT_NHIT: tl.constexpr, PRECISION: tl.constexpr,
                        INTERP: tl.constexpr):
    rf = tl.arange(0, BLOCK_F)
    rd = tl.arange(0, BLOCK_D)
    eye = rf[:, None] == rf[None, :]
    for i in tl.static_range(SEQ):
        seq = tl.program_id(0) * SEQ + i
        live = seq < n_seq
        n = (seq // H).to(tl.int64)
        h = seq % H
        fm = (rf < F) & live
        m2 = fm[:, None] & (rd[None, :] < D)
        cols = (rf < F)[None, :]
        q = _load(Q, n * s_q0 + h * s_q1, s_q2, rf, rd, m2)
        k = _load(K, n * s_k0 + h * s_k1, s_k2, rf, rd, m2)
        v = _load(V, n * s_v0 + h * s_v1, s_v2, rf, rd, m2)
        qp = _load(QP, n * s_qp0 + h * s_qp1, s_qp2, rf, rd, m2)
        kp = _load(KP, n * s_kp0 + h * s_kp1, s_kp2, rf, rd, m2)
        ap, hit, a = _maps(q, k, qp, kp, cols, alpha, gap, scale, PRECISION, INTERP)
        if USE_GATE:
            t = a + tl.load(G + h) * ap
        else:
            t = a
        o = _dot(t.to(v.dtype), v, PRECISION, INTERP)
        o_ptr = O + n * s_o0 + h * s_o1 + rf[:, None] * s_o2 + rd[None, :]
        tl.store(o_ptr, o.to(O.dtype.element_ty), mask=m2)
        row = seq.to(tl.int64) * F + rf
        if WANT_DIAG:
            tl.store(DIAG + row, tl.sum(tl.where(eye, a, 0.0), 1), mask=fm)
        if WANT_NHIT:
            tl.store(NHIT + row, tl.sum(hit.to(tl.int32), 1), mask=fm)


@triton.jit
def track_attention_bwd(Q, K, V, QP, KP, G, DO, DDIAG, DQ, DK, DV, DQP, DKP, DG,
                        s_q0, s_q1, s_q2, s_k0, s_k1, s_k2, s_v0, s_v1, s_v2,
                        s_qp0, s_qp1, s_qp2, s_kp0, s_kp1, s_kp2, s_do0, s_do1, s_do2,
                        n_seq, H, F, D, alpha, gap, scale,
                        BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, SEQ: tl.constexpr, USE_GATE: tl.constexpr,
                        HAS_DDIAG: tl.constexpr, PRECISION: tl.constexpr, INTERP: tl.constexpr):
    """Gradients are written contiguous (N, heads, F, d) into DQ … DKP; DG gets one partial
    sum Σ dT⊙A′ per sequence (summed over positions on the host)."""
    rf = tl.arange(0, BLOCK_F)
    rd = tl.arange(0, BLOCK_D)
    eye = rf[:, None] == rf[None, :]
    for i in tl.static_range(SEQ):
        seq = tl.program_id(0) * SEQ + i
        live = seq < n_seq
        n = (seq // H).to(tl.int64)
        h = seq % H
        fm = (rf < F) & live
        m2 = fm[:, None] & (rd[None, :] < D)
        cols = (rf < F)[None, :]
        q = _load(Q, n * s_q0 + h * s_q1, s_q2, rf, rd, m2)
        k = _load(K, n * s_k0 + h * s_k1, s_k2, rf, rd, m2)
        v = _load(V, n * s_v0 + h * s_v1, s_v2, rf, rd, m2)
        qp = _load(QP, n * s_qp0 + h * s_qp1, s_qp2, rf, rd, m2)
        kp = _load(KP, n * s_kp0 + h * s_kp1, s_kp2, rf, rd, m2)
        do = _load(DO, n * s_do0 + h * s_do1, s_do2, rf, rd, m2)
        ap, hit, a = _maps(q, k, qp, kp, cols, alpha, gap, scale, PRECISION, INTERP)
        if USE_GATE:
            g = tl.load(G + h)
            t = a + g * ap
        else:
            t = a
        dt = _dot(do, tl.trans(v), PRECISION, INTERP)  # dT = dO·vᵀ, fp32
        dv = _dot(tl.trans(t.to(v.dtype)), do, PRECISION, INTERP)
        row = seq.to(tl.int64) * F + rf
        da = dt
        if HAS_DDIAG:
            dd = tl.load(DDIAG + row, mask=fm, other=0.0)
            da = da + tl.where(eye, dd[:, None], 0.0)
        ds = (a * (da - tl.sum(da * a, 1)[:, None])).to(q.dtype)
        dq = _dot(ds, k, PRECISION, INTERP) * scale
        dk = _dot(tl.trans(ds), q, PRECISION, INTERP) * scale
        ptr = (n * H + h) * F * D + rf[:, None] * D + rd[None, :]  # contiguous (N, heads, F, d)
        tl.store(DQ + ptr, dq.to(DQ.dtype.element_ty), mask=m2)
        tl.store(DK + ptr, dk.to(DK.dtype.element_ty), mask=m2)
        tl.store(DV + ptr, dv.to(DV.dtype.element_ty), mask=m2)
        if USE_GATE:
            dap = g * dt
            dsp = (ap * (dap - tl.sum(dap * ap, 1)[:, None])).to(q.dtype)
            dqp = _dot(dsp, kp, PRECISION, INTERP) * scale
            dkp = _dot(tl.trans(dsp), qp, PRECISION, INTERP) * scale
            tl.store(DQP + ptr, dqp.to(DQP.dtype.element_ty), mask=m2)
            tl.store(DKP + ptr, dkp.to(DKP.dtype.element_ty), mask=m2)
            tl.store(DG + seq, tl.sum(tl.sum(dt * ap, 1), 0), mask=live)
