/* Batch-1 sparse decode kernels, compiled at first use by sparsealign/sparse/kernels.py (gcc -O3 -march=native
   -fopenmp); see that module for what calls them. */
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include <immintrin.h>
/* Rows are read in an order only the index knows, so the hardware prefetcher restarts at every row; while one
   row is processed, the next one (pf) is prefetched line by line, a 1 KB block at a time. */
static inline void prefetch_block(const float* pf, int64_t i0, int64_t i1) {
    if (pf) for (int64_t p = i0; p < i1; p += 16) __builtin_prefetch(pf + p, 0, 3);
}
static inline float dot(const float* a, const float* b, int64_t n, const float* pf) {
    float acc = 0.f;
    for (int64_t i0 = 0; i0 < n; i0 += 256) {
        int64_t i1 = i0 + 256 < n ? i0 + 256 : n;
        prefetch_block(pf, i0, i1);
        #pragma omp simd reduction(+:acc)
        for (int64_t i = i0; i < i1; i++) acc += a[i] * b[i];
    }
    return acc;
}
static inline void axpy(float s, const float* x, float* y, int64_t n, const float* pf) {
    for (int64_t i0 = 0; i0 < n; i0 += 256) {
        int64_t i1 = i0 + 256 < n ? i0 + 256 : n;
        prefetch_block(pf, i0, i1);
        #pragma omp simd
        for (int64_t i = i0; i < i1; i++) y[i] += s * x[i];
    }
}
/* Gathered rows, 4 at a time: rows are read in an order only the index knows, so one row at a time leaves a single
   stream in flight and ~45% of the read bandwidth unused; 4 interleaved rows (and the next 4 prefetched block by
   block) keep 4 in flight: 1B FFN, 563 of 5632 rows, up+down 0.82 -> 0.44 ms, 782 gate rows 0.50 -> 0.30 ms.
   Row j is base + idx[j] * stride, n floats. */
static inline void four_rows(const float* base, int64_t stride, const int64_t* idx, int64_t j, int64_t k,
                             const float** r, const float** pf) {  /* rows j..j+3, and j+4..j+7 to prefetch */
    for (int m = 0; m < 4; m++) {
        r[m] = base + idx[j + m] * stride;
        pf[m] = j + 4 + m < k ? base + idx[j + 4 + m] * stride : 0;
    }
}
static inline int64_t prefetch_four(const float** pf, int64_t i0, int64_t n) {  /* block [i0, i1): returns i1 */
    int64_t i1 = i0 + 256 < n ? i0 + 256 : n;
    for (int m = 0; m < 4; m++) prefetch_block(pf[m], i0, i1);
    return i1;
}
static void dot_rows(const float* base, int64_t stride, const int64_t* idx, int64_t k, const float* x, int64_t n,
                     float* out) {
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + 4 <= k && n % 16 == 0; j += 4) {
        const float* r[4];
        const float* pf[4];
        four_rows(base, stride, idx, j, k, r, pf);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i0 = 0; i0 < n; i0 += 256) {
            int64_t i1 = prefetch_four(pf, i0, n);
            for (int64_t i = i0; i < i1; i += 16) {
                __m512 xv = _mm512_loadu_ps(x + i);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r[0] + i), xv, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r[1] + i), xv, a1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r[2] + i), xv, a2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r[3] + i), xv, a3);
            }
        }
        out[j] = _mm512_reduce_add_ps(a0); out[j + 1] = _mm512_reduce_add_ps(a1);
        out[j + 2] = _mm512_reduce_add_ps(a2); out[j + 3] = _mm512_reduce_add_ps(a3);
    }
#endif
    for (; j < k; j++)
        out[j] = dot(base + idx[j] * stride, x, n, j + 1 < k ? base + idx[j + 1] * stride : 0);
}
/* y[n] += sum_j c[j] * row_j, 4 rows per pass over y */
static void add_rows(const float* base, int64_t stride, const int64_t* idx, const float* c, int64_t k, int64_t n,
                     float* y) {
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + 4 <= k && n % 16 == 0; j += 4) {
        const float* r[4];
        const float* pf[4];
        four_rows(base, stride, idx, j, k, r, pf);
        __m512 c0 = _mm512_set1_ps(c[j]), c1 = _mm512_set1_ps(c[j + 1]);
        __m512 c2 = _mm512_set1_ps(c[j + 2]), c3 = _mm512_set1_ps(c[j + 3]);
        for (int64_t i0 = 0; i0 < n; i0 += 256) {
            int64_t i1 = prefetch_four(pf, i0, n);
            for (int64_t i = i0; i < i1; i += 16) {
                __m512 acc = _mm512_loadu_ps(y + i);
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(r[0] + i), c0, acc);
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(r[1] + i), c1, acc);
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(r[2] + i), c2, acc);
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(r[3] + i), c3, acc);
                _mm512_storeu_ps(y + i, acc);
            }
        }
    }
#endif
    for (; j < k; j++) axpy(c[j], base + idx[j] * stride, y, n, j + 1 < k ? base + idx[j + 1] * stride : 0);
}
void rowdots(const float* w, const int64_t* idx, int64_t k, const float* x, int64_t H, float* out, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if(nthreads > 1 && k >= 256)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int64_t j0 = k * t / n, j1 = k * (t + 1) / n;
        dot_rows(w, H, idx + j0, j1 - j0, x, H, out + j0);
    }
}
/* y += sum over rows j0..j1 of c[j] (w_up[idx[j]] . x) w_down_t[idx[j]]: all up dots first, then the down rows */
static void updown_range(const float* x, const float* c, const int64_t* idx, int64_t j0, int64_t j1,
                         const float* w_up, const float* w_down_t, int64_t H, float* y, float* h) {
    dot_rows(w_up, H, idx + j0, j1 - j0, x, H, h + j0);
    for (int64_t j = j0; j < j1; j++) h[j] *= c[j];
    add_rows(w_down_t, H, idx + j0, h + j0, j1 - j0, H, y);
}
void updown(const float* x, const float* c, const int64_t* idx, int64_t k, const float* w_up,
            const float* w_down_t, int64_t H, float* y, float* scratch, float* h, int nthreads) {
    memset(y, 0, H * sizeof(float));
    if (nthreads <= 1 || k < 256) {
        updown_range(x, c, idx, 0, k, w_up, w_down_t, H, y, h);
        return;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        float* acc = scratch + (int64_t)t * H;
        memset(acc, 0, H * sizeof(float));
        updown_range(x, c, idx, k * t / n, k * (t + 1) / n, w_up, w_down_t, H, acc, h);
    }
    for (int t = 0; t < nthreads; t++) axpy(1.f, scratch + (int64_t)t * H, y, H, 0);
}
/* Bounded gate pre-check.  q [I, H] int8 with per-row scale s (W[i] ~ s_i q_i), e[i] = ||W[i] - s_i q_i||_2 and
   qn[i] = ||s_i q_i||_2, both stored at build time.  x is quantised to int16 xq with step sx (|xq| small enough
   that the int32 dot cannot overflow), so q_i . xq is exact integer arithmetic (AVX-512 VNNI: 32 MACs an op) and
       |W[i].x - s_i sx (q_i . xq)| <= e[i] ||x|| + qn[i] ||x - sx xq||          (Cauchy-Schwarz, twice)
   g_i lies in [lo, hi] = estimate -+ that radius (+ a float-rounding slack), and max |act(g)| over the interval
   bounds |a_i|.  Rows whose bound is <= floor (<= the threshold applied) can never be active: they are skipped,
   exactly.  act: 0 relu, 1 silu.  Writes the candidate rows to idx, returns their number. */
static inline float silu(float v) { return v / (1.f + __builtin_expf(-v)); }
/* inter: q is stored 4 rows at a time with their 32-byte chunks interleaved (`fastpath.quantize_rows`), so a block
   of 4 rows is one sequential stream: from memory, 1B gate 0.99 -> 0.50 ms (4 row-major rows 2 KB apart left the
   hardware prefetcher 4 short streams per block). Row-major otherwise. */
static inline int8_t q_at(const int8_t* r, int64_t H, int64_t m, int64_t j, int inter) {
    return inter ? r[(j >> 5) * 128 + m * 32 + (j & 31)] : r[m * H + j];
}
static inline void dot4_i8(const int8_t* r, int64_t H, const int16_t* xq, int64_t n, int32_t* out, int inter) {
    int64_t j0 = 0;
    for (int64_t m = 0; m < 4; m++) out[m] = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    if (n == 4) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        int64_t step = inter ? 32 : H;  /* offset of row m's chunk: m * step (+ 4 * j0 when interleaved) */
        for (; j0 + 32 <= H; j0 += 32) {
            __m512i xv = _mm512_loadu_si512((const void*)(xq + j0));
            const int8_t* b = inter ? r + 4 * j0 : r + j0;
            a0 = _mm512_dpwssd_epi32(a0, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(b))), xv);
            a1 = _mm512_dpwssd_epi32(a1, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(b + step))), xv);
            a2 = _mm512_dpwssd_epi32(a2, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(b + 2 * step))), xv);
            a3 = _mm512_dpwssd_epi32(a3, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(b + 3 * step))), xv);
        }
        out[0] = _mm512_reduce_add_epi32(a0); out[1] = _mm512_reduce_add_epi32(a1);
        out[2] = _mm512_reduce_add_epi32(a2); out[3] = _mm512_reduce_add_epi32(a3);
    }
#endif
    for (int64_t m = 0; m < n; m++) {
        int32_t acc = 0;
        for (int64_t j = (n == 4) ? j0 : 0; j < H; j++) acc += (int32_t)q_at(r, H, m, j, inter) * (int32_t)xq[j];
        out[m] += acc;
    }
}
int64_t precheck(const int8_t* q, const float* s, const float* e, const float* qn, int64_t I, int64_t H,
                 const float* x, float floor_, int act, float* ub, int64_t* idx, int16_t* xq, int inter,
                 int nthreads) {
    float amax = 0.f, xn2 = 0.f, dx2 = 0.f;
    for (int64_t j = 0; j < H; j++) { float v = __builtin_fabsf(x[j]); amax = v > amax ? v : amax; xn2 += x[j] * x[j]; }
    double lim = 2147483000.0 / (127.0 * (double)H);  /* |sum of H products| < 2^31 */
    float qmax = (float)(lim < 32767.0 ? lim : 32767.0);
    float sx = amax > 0.f ? amax / qmax : 1.f;
    for (int64_t j = 0; j < H; j++) {
        float v = __builtin_roundf(x[j] / sx);
        v = v > qmax ? qmax : (v < -qmax ? -qmax : v);
        xq[j] = (int16_t)v;
        float d = x[j] - sx * v; dx2 += d * d;
    }
    float xnorm = __builtin_sqrtf(xn2) * 1.0001f, dxn = __builtin_sqrtf(dx2) * 1.0001f + 1e-30f;
    #pragma omp parallel for num_threads(nthreads) if(nthreads > 1) schedule(static)
    for (int64_t i0 = 0; i0 < I; i0 += 4) {  /* 4 rows at a time: independent accumulators, xq read once */
        int64_t n = I - i0 < 4 ? I - i0 : 4;
        int32_t acc[4];
        dot4_i8(q + i0 * H, H, xq, n, acc, inter);
        for (int64_t m = 0; m < n; m++) {
            int64_t i = i0 + m;
            float g = s[i] * sx * (float)acc[m];
            float rad = e[i] * xnorm + qn[i] * dxn + 1e-5f * __builtin_fabsf(g) + 1e-30f;
            float lo = g - rad, hi = g + rad, mx;
            if (act == 0) mx = hi > 0.f ? hi : 0.f;
            else {
                float a = __builtin_fabsf(silu(lo)), b = __builtin_fabsf(silu(hi));
                mx = a > b ? a : b;
                if (lo < -1.2785f && hi > -1.2785f && mx < 0.2785f) mx = 0.2785f;
            }
            ub[i] = mx;
        }
    }
    int64_t k = 0;
    for (int64_t i = 0; i < I; i++) if (ub[i] > floor_) idx[k++] = i;
    return k;
}
/* One dynamic-threshold step of one row at batch-1 decode: `ThresholdController._advance` (the Python rule is the
   reference; tests/sparse/test_sparse_math.py checks they agree) in one call -- in Python, on caches the weight
   stream has just flushed, the same step costs ~0.4 ms per layer.  a [D] = |activations| (>= 0); k = the
   quantile's rank; state m, delta, seen, ema updated in place; returns the threshold applied to this token. */
#define RADIX_MIN 256  /* rows shorter than this: selection on the positives directly */
static float select_kth(float* v, int64_t n, int64_t k) {  /* k-th smallest (0-based), Hoare selection */
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) { float tmp = v[i]; v[i] = v[j]; v[j] = tmp; i++; j--; }
        }
        if (k <= j) hi = j; else if (k >= i) lo = i; else return v[k];
    }
    return v[k];
}
double controller_step(const float* a, int64_t n, int64_t D, int64_t k, float floor_, double* m, double* delta,
                       int64_t* seen, double* ema, double density, double track_warm, double track, double step_warm,
                       double step, int64_t warmup, double band, double bound, double ema_c, float* scratch) {
    /* a [n]: the row's values; the other D - n are 0 (rows the gate pre-check proved inactive) */
    double t = __builtin_exp(*m + *delta);
    float tf = (float)t;
    int64_t npos = 0, above = 0;
    float kth = 0.f;
    if (n < RADIX_MIN) {
        for (int64_t i = 0; i < n; i++) {
            float v = a[i];
            if (v > 0.f) scratch[npos++] = v;
            above += v > tf;
        }
        int64_t j = k - (D - npos);  /* rank among the positive values: the zeros come first */
        kth = j > 0 ? select_kth(scratch, npos, j - 1) : 0.f;
    } else {
        /* Hoare selection mispredicts a branch per comparison (~40 ns per value at D = 1,536); a positive float's
           bits order like the float, so one histogram pass over the top 11 bits finds the bucket of the j-th value
           and only that bucket (tens of values) is selected in. */
        uint32_t hist[2048] = {0};
        for (int64_t i = 0; i < n; i++) {
            float v = a[i];
            uint32_t bits;
            memcpy(&bits, &v, 4);
            int pos = v > 0.f;
            hist[bits >> 20] += pos;
            npos += pos;
            above += v > tf;
        }
        int64_t j = k - (D - npos);
        if (j > 0) {
            int64_t below = 0;
            uint32_t key = 0;
            while (below + hist[key] < (uint64_t)j) below += hist[key++];
            int64_t nb = 0;
            for (int64_t i = 0; i < n; i++) {
                uint32_t bits;
                memcpy(&bits, &a[i], 4);
                if (a[i] > 0.f && (bits >> 20) == key) scratch[nb++] = a[i];
            }
            kth = select_kth(scratch, nb, j - 1 - below);
        }
    }
    double log_q = __builtin_log((double)(kth > floor_ ? kth : floor_));
    double f = (double)above / (double)D;
    int warm = *seen < warmup;
    double alpha = warm ? track_warm : track, eta = warm ? step_warm : step;
    if (__builtin_fabs(log_q - (*m + *delta)) <= band) {
        double d2 = *delta + eta * (f - density);
        *delta = d2 < -bound ? -bound : (d2 > bound ? bound : d2);
    }
    *m = *m + alpha * (log_q - *m);
    *ema = ema_c * *ema + (1 - ema_c) * (1.0 - f);
    *seen += 1;
    return t;
}
/* The controller's teacher-forced scan (`ThresholdController.scan`) in one call.  a [B, T, D]: |v| (float32).  Each
   row b runs its positions in order from its state (m, delta, seen, ema [B], updated in place): out[b, j] = the
   threshold applied (exp(m + delta), float32), then `controller_step` on the position unless valid[b, j] == 0
   (padding: state untouched; valid NULL = all real).  parent [B, T] (NULL: linear rows): where a real position's
   parent p >= 0 is not j - 1, the row continues from the state it had after p (a packed pair's rejected branch
   starts from the end of the prompt); hist [B, T, 4] keeps each position's state for that.  Rows are independent:
   they split over nthreads (a layer's scan is milliseconds, well above an OpenMP region's cost); scratch is [B, D]. */
void controller_scan(const float* a, int64_t B, int64_t T, int64_t D, const uint8_t* valid, const int64_t* parent,
                     double* hist, float* out, int nthreads, int64_t k, float floor_, double* m, double* delta,
                     int64_t* seen, double* ema, double density, double track_warm, double track, double step_warm,
                     double step, int64_t warmup, double band, double bound, double ema_c, float* scratch) {
    #pragma omp parallel for num_threads(nthreads) if(nthreads > 1 && B > 1) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        double mb = m[b], db = delta[b], eb = ema[b];
        int64_t sb = seen[b];
        for (int64_t j = 0; j < T; j++) {
            int64_t i = b * T + j;
            int real = valid == NULL || valid[i];
            if (parent != NULL && real && parent[i] >= 0 && parent[i] != j - 1) {
                const double* h = hist + (b * T + parent[i]) * 4;
                mb = h[0]; db = h[1]; sb = (int64_t)h[2]; eb = h[3];
            }
            out[i] = (float)__builtin_exp(mb + db);
            if (real)
                controller_step(a + i * D, D, D, k, floor_, &mb, &db, &sb, &eb, density, track_warm, track,
                                step_warm, step, warmup, band, bound, ema_c, scratch + b * D);
            if (parent != NULL) {
                double* h = hist + i * 4;
                h[0] = mb; h[1] = db; h[2] = (double)sb; h[3] = eb;
            }
        }
        m[b] = mb; delta[b] = db; seen[b] = sb; ema[b] = eb;
    }
}
/* Static / dynamic batch-1 FFN after the gate pre-check, in one call: exact gate rows of the nc candidates,
   act (0 relu, 1 silu), the threshold (t_static, or the controller's step when m is not NULL: `controller_step`
   on the candidates' |a|), then up and down over the kept rows.  Writes y [H] and *t_out; returns the number kept.
   a, kval, h [nc], kidx [nc], scratch [nc] are caller buffers. */
int64_t sparse_ffn(const float* x, const int64_t* cand, int64_t nc, int64_t D, const float* w_gate, int act,
                   float t_static, const float* w_up, const float* w_down_t, int64_t H, float* y, float* a,
                   int64_t* kidx, float* kval, float* h, float* t_out, int64_t k, float floor_, double* m,
                   double* delta, int64_t* seen, double* ema, double density, double track_warm, double track,
                   double step_warm, double step, int64_t warmup, double band, double bound, double ema_c,
                   float* scratch) {
    dot_rows(w_gate, H, cand, nc, x, H, a);
    for (int64_t j = 0; j < nc; j++) a[j] = act == 0 ? (a[j] > 0.f ? a[j] : 0.f) : silu(a[j]);
    float t = t_static;
    if (m) {
        for (int64_t j = 0; j < nc; j++) h[j] = __builtin_fabsf(a[j]);
        t = (float)controller_step(h, nc, D, k, floor_, m, delta, seen, ema, density, track_warm, track, step_warm,
                                   step, warmup, band, bound, ema_c, scratch);
    }
    int64_t kept = 0;
    for (int64_t j = 0; j < nc; j++)
        if (__builtin_fabsf(a[j]) > t) { kidx[kept] = cand[j]; kval[kept++] = a[j]; }
    memset(y, 0, H * sizeof(float));
    updown_range(x, kval, kidx, 0, kept, w_up, w_down_t, H, y, h);
    *t_out = t;
    return kept;
}
/* Column-sparse matvec (TEAL): y[O] = sum_j v[j] * wt[idx[j]], wt [*, O] the transposed (input-major) weight, so
   only the rows of active inputs are read, each once.  Threads split the O outputs (no reduction needed). */
void colsparse(const float* wt, const int64_t* idx, const float* v, int64_t k, int64_t O, float* y, int nthreads) {
    #pragma omp parallel num_threads(nthreads) if(nthreads > 1)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int64_t o0 = (O * t / n) & ~(int64_t)15, o1 = t == n - 1 ? O : (O * (t + 1) / n) & ~(int64_t)15;
        memset(y + o0, 0, (o1 - o0) * sizeof(float));
        add_rows(wt + o0, O, idx, v, k, o1 - o0, y + o0);
    }
}
/* The same with the selection fused in (one call per projection): J = {j : |x_j| > t}; returns |J|. */
int64_t colsparse_t(const float* wt, const float* x, int64_t In, float t, int64_t O, float* y, int64_t* idx,
                    float* v, int nthreads) {
    int64_t k = 0;
    for (int64_t j = 0; j < In; j++) if (__builtin_fabsf(x[j]) > t) { idx[k] = j; v[k++] = x[j]; }
    colsparse(wt, idx, v, k, O, y, nthreads);
    return k;
}
/* Sustained read bandwidth probe: a streaming sum the compiler vectorises (several accumulators). */
float stream_sum(const float* a, int64_t n, int nthreads) {
    float acc = 0.f;
    #pragma omp parallel for simd num_threads(nthreads) reduction(+:acc) schedule(static)
    for (int64_t i = 0; i < n; i++) acc += a[i];
    return acc;
}
