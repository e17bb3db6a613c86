"""A small C kernel for batch-1 sparse decode, built once with the system C compiler and loaded with ctypes.

Why C and not torch ops: gathering the active rows (`F.embedding`/`index_select`) copies |S|*H floats before the
matvec, so at moderate sparsity the gather costs as much as the dense kernel saves.  The loops below read each
active row in place, once:

    rowdots:  out[j] = W[idx[j]] . x                                   (gate rows of a predicted set)
    updown:   y = sum_j c[j] * (W_up[idx[j]] . x) * W_down^T[idx[j]]   (up and down of the active set, fused)

OpenMP splits j over torch's thread count (per-thread accumulators, summed at the end).  No torch headers, so the
build takes well under a second; the .so is cached under `settings.cache_dir()/kernels`, keyed by source, compiler
flags and CPU.  Without a compiler (or with SPARSEALIGN_SPARSE_KERNEL=torch) `load()` returns None and the fast
path uses torch gather ops instead.  fp32, contiguous, bias-free weights only (everything else uses torch).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <omp.h>
static inline float dot(const float* a, const float* b, int64_t n) {
    float acc = 0.f;
    #pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}
static inline void axpy(float s, const float* x, float* y, int64_t n) {
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += s * x[i];
}
void rowdots(const float* w, const int64_t* idx, int64_t k, const float* x, int64_t H, float* out, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) if(nthreads > 1 && k >= 256) schedule(static)
    for (int64_t j = 0; j < k; j++) out[j] = dot(w + idx[j] * H, x, H);
}
void updown(const float* x, const float* c, const int64_t* idx, int64_t k, const float* w_up,
            const float* w_down_t, int64_t H, float* y, float* scratch, int nthreads) {
    memset(y, 0, H * sizeof(float));
    if (nthreads <= 1 || k < 256) {
        for (int64_t j = 0; j < k; j++)
            axpy(c[j] * dot(w_up + idx[j] * H, x, H), w_down_t + idx[j] * H, y, H);
        return;
    }
    #pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        float* acc = scratch + (int64_t)t * H;
        memset(acc, 0, H * sizeof(float));
        for (int64_t j = k * t / n; j < k * (t + 1) / n; j++)
            axpy(c[j] * dot(w_up + idx[j] * H, x, H), w_down_t + idx[j] * H, acc, H);
    }
    for (int t = 0; t < nthreads; t++) axpy(1.f, scratch + (int64_t)t * H, y, H);
}
"""
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
P, I64, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
MAX_THREADS = 64


def _cpu_key() -> str:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha256(flags.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (the caller falls back to torch)."""
    if os.environ.get("SPARSEALIGN_SPARSE_KERNEL", "c") == "torch" or sys.platform == "win32":
        return None
    from sparsealign.settings import cache_dir

    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    key = hashlib.sha256((SOURCE + " ".join(FLAGS) + cc + _cpu_key()).encode()).hexdigest()[:16]
    so = cache_dir() / "kernels" / f"sparse_decode_{key}.so"
    if not so.exists():
        from sparsealign.io import atomic_path

        so.parent.mkdir(parents=True, exist_ok=True)
        src = so.with_suffix(".c")
        src.write_text(SOURCE, encoding="utf-8")
        try:
            with atomic_path(so, suffix=".so") as tmp:
                subprocess.run([cc, *FLAGS, str(src), "-o", str(tmp)], check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"warning: sparse decode C kernel not built ({exc}); using torch ops", file=sys.stderr)
            return None
    lib = ctypes.CDLL(str(so))
    lib.rowdots.argtypes = [P, P, I64, P, I64, P, INT]
    lib.updown.argtypes = [P, P, P, I64, P, P, I64, P, P, INT]
    return lib


# Below this many active rows the kernel runs on one thread: measured on 2 shared cores, `updown` over 563 rows of a
# 1B-shaped layer took 8.0 ms in a 2-thread OpenMP region (stalls at the barrier while torch's own pool holds the
# other core) and 0.24 ms on one thread; the work is too small to split.  Override: SPARSEALIGN_KERNEL_MIN_ROWS.
PARALLEL_MIN_ROWS = int(os.environ.get("SPARSEALIGN_KERNEL_MIN_ROWS", "8192"))


def _threads(rows: int) -> int:
    if rows < PARALLEL_MIN_ROWS:
        return 1
    return max(1, min(torch.get_num_threads(), MAX_THREADS))


def rowdots(lib: ctypes.CDLL, w: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(idx.numel(), dtype=torch.float32)
    lib.rowdots(w.data_ptr(), idx.data_ptr(), idx.numel(), x.data_ptr(), x.numel(), out.data_ptr(), _threads(idx.numel()))
    return out


def updown(lib: ctypes.CDLL, x: torch.Tensor, c: torch.Tensor, idx: torch.Tensor, w_up: torch.Tensor,
           w_down_t: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    y = torch.empty(x.numel(), dtype=torch.float32)
    lib.updown(x.data_ptr(), c.data_ptr(), idx.data_ptr(), idx.numel(), w_up.data_ptr(), w_down_t.data_ptr(),
               x.numel(), y.data_ptr(), scratch.data_ptr(), _threads(idx.numel()))
    return y
