"""Weights in 2 MB transparent huge pages, for batch-1 decode on CPU.

Batch-1 decode streams every weight it touches once per token.  With 4 KB pages the hardware prefetcher stops at
each page boundary and a sparse kernel that reads scattered 8 KB neuron rows takes a TLB miss on most of them;
in 2 MB pages neither happens.  Measured on this 2-core Zen 4 machine (1B-shaped FFN, 1 thread, weights beyond the
cache): dense gate matvec 2.75 -> 2.42 ms, the sparse up/down kernel over 10% of the rows 1.07 -> 0.83 ms.
Many kernels are configured `madvise` (huge pages only where asked for), so the memory is mapped here, advised,
and only then written.  `rehome_weights` moves a model's large weights there -- the dense and the sparse decoder
read the same tensors, so the comparison stays fair.  Where mmap/madvise are unavailable, plain tensors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import sys

import torch
from torch import nn

HUGE = 2 << 20
MADV_HUGEPAGE = 14  # linux/mman.h


@functools.lru_cache(maxsize=1)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


def huge_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory was advised for huge pages before first touch (the tensor keeps
    its mapping alive); a plain `torch.empty` where that is not possible."""
    madvise = _madvise()
    nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
    if madvise is None or nbytes < HUGE:
        return torch.empty(shape, dtype=dtype)
    size = nbytes + 2 * HUGE
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    offset = (-addr) % HUGE
    madvise(addr + offset, (size - offset) // HUGE * HUGE, MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=torch.uint8)[offset:offset + nbytes].view(dtype).view(shape)


def huge_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `t` in huge pages (CPU tensors of at least 2 MB; others: `t.contiguous()`)."""
    if t.device.type != "cpu" or t.numel() * t.element_size() < HUGE:
        return t.contiguous()
    return huge_empty(tuple(t.shape), t.dtype).copy_(t)


@torch.no_grad()
def rehome_weights(model: nn.Module, min_bytes: int = HUGE) -> int:
    """Move every CPU parameter of at least `min_bytes` into huge pages in place (same values, same Parameter
    objects, so tied weights stay tied); returns the bytes moved."""
    moved, done = 0, {}
    for param in model.parameters():
        if param.device.type != "cpu" or param.numel() * param.element_size() < min_bytes:
            continue
        key = param.data_ptr()
        if key not in done:
            done[key] = huge_copy(param.data)
            moved += param.numel() * param.element_size()
        param.data = done[key]
    return moved
