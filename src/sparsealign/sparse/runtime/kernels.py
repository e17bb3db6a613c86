"""A small C kernel for batch-1 sparse decode, built once with the system C compiler and loaded with ctypes.

Why C and not torch ops: gathering the active rows (`F.embedding`/`index_select`) copies |S|*H floats before the
matvec, so at moderate sparsity the gather costs as much as the dense kernel saves.  The loops (`kernels.c`,
beside this file) read each active row in place, once, 4 rows in flight:

    rowdots:    out[j] = W[idx[j]] . x                                   (gate rows of a predicted set)
    updown:     y = sum_j c[j] * (W_up[idx[j]] . x) * W_down^T[idx[j]]   (up and down of the active set)
    precheck:   rows whose int8 bound on |act(W_gate x)| can exceed a floor (exact gate pre-check)
    sparse_ffn: static / dynamic FFN of one token after the pre-check (controller_step: the dynamic update)
    controller_scan: a teacher-forced forward's dynamic thresholds, every row and position in one call
    colsparse:  TEAL's column-sparse matvec; stream_sum: the bandwidth probe

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

from sparsealign.io import atomic_path
from sparsealign.settings import cache_dir

SOURCE = (Path(__file__).with_name("kernels.c")).read_text(encoding="utf-8")  # the C source, beside this file
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
P, I64, INT, FLT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
MAX_THREADS = 64
# `sparse_ffn`'s controller arguments (`ThresholdController.c_state`) for a static threshold: m = NULL
NO_CONTROLLER = (0, 0.0, None, None, None, None, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, None)


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

    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    key = hashlib.sha256((SOURCE + " ".join(FLAGS) + cc + _cpu_key()).encode()).hexdigest()[:16]
    so = cache_dir() / "kernels" / f"sparse_decode_{key}.so"
    if not so.exists():

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
    lib.updown.argtypes = [P, P, P, I64, P, P, I64, P, P, P, INT]
    lib.precheck.argtypes = [P, P, P, P, I64, I64, P, FLT, INT, P, P, P, INT, INT]
    lib.precheck.restype = I64
    lib.colsparse.argtypes = [P, P, P, I64, I64, P, INT]
    lib.colsparse_t.argtypes = [P, P, I64, FLT, I64, P, P, P, INT]
    lib.colsparse_t.restype = I64
    state = [I64, FLT, P, P, P, P, *[ctypes.c_double] * 5, I64, *[ctypes.c_double] * 3, P]  # controller's
    lib.controller_step.argtypes = [P, I64, I64, *state]
    lib.sparse_ffn.argtypes = [P, P, I64, I64, P, INT, FLT, P, P, I64, P, P, P, P, P, P, *state]
    lib.sparse_ffn.restype = I64
    lib.controller_step.restype = ctypes.c_double
    lib.controller_scan.argtypes = [P, I64, I64, I64, P, P, P, P, INT, *state]
    lib.stream_sum.argtypes = [P, I64, INT]
    lib.stream_sum.restype = FLT
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
    y, h = torch.empty(x.numel(), dtype=torch.float32), torch.empty(idx.numel(), dtype=torch.float32)
    lib.updown(x.data_ptr(), c.data_ptr(), idx.data_ptr(), idx.numel(), w_up.data_ptr(), w_down_t.data_ptr(),
               x.numel(), y.data_ptr(), scratch.data_ptr(), h.data_ptr(), _threads(idx.numel()))
    return y


def precheck(lib: ctypes.CDLL, q8: tuple[torch.Tensor, ...], x: torch.Tensor, floor: float, act: int,
             threads: int = 1) -> torch.Tensor:
    """Rows i of the int8 gate `q8` = (q, scale, err, qnorm, interleaved) (`fastpath.quantize_rows`) whose bound on
    |act(W_gate[i] . x)| exceeds `floor` (int64 [k])."""
    q, scale, err, qnorm, interleaved = q8
    rows, h = q.shape
    ub, idx, xq = torch.empty(rows), torch.empty(rows, dtype=torch.int64), torch.empty(h, dtype=torch.int16)
    k = lib.precheck(q.data_ptr(), scale.data_ptr(), err.data_ptr(), qnorm.data_ptr(), rows, h, x.data_ptr(), floor,
                     act, ub.data_ptr(), idx.data_ptr(), xq.data_ptr(), int(interleaved), threads)
    return idx[:k]


def colsparse(lib: ctypes.CDLL, wt: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """y = sum_j v[j] * wt[idx[j]] for an input-major weight wt [In, Out] (reads |idx| rows in place)."""
    y = torch.empty(wt.shape[1], dtype=torch.float32)
    lib.colsparse(wt.data_ptr(), idx.data_ptr(), v.data_ptr(), idx.numel(), wt.shape[1], y.data_ptr(), threads)
    return y


def colsparse_t(lib: ctypes.CDLL, wt: torch.Tensor, x: torch.Tensor, t: float, threads: int = 1) -> tuple[torch.Tensor, int]:
    """(W x_J, |J|) with J = {j : |x_j| > t}, W given input-major as wt [In, Out]: selection and matvec in one call."""
    n_in, n_out = wt.shape
    y, idx, v = torch.empty(n_out), torch.empty(n_in, dtype=torch.int64), torch.empty(n_in)
    k = lib.colsparse_t(wt.data_ptr(), x.data_ptr(), n_in, t, n_out, y.data_ptr(), idx.data_ptr(), v.data_ptr(),
                        threads)
    return y, int(k)


def stream_sum(lib: ctypes.CDLL, a: torch.Tensor, threads: int) -> float:
    return float(lib.stream_sum(a.data_ptr(), a.numel(), threads))
