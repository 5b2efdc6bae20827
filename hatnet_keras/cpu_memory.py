"""Faster CPU runs by keeping freed memory in the process for reuse.

On a CPU, the torch backend and TensorFlow's graph executor give every operation a
freshly allocated output. The allocators serve large buffers with `mmap` and give them
back to the operating system on free, so each operation page-faults its output in
again: on a 2-core machine that was a third of the CPU time of a HAT-Net forward pass
(system time) and made SiLU over a stage-1 map three times slower than it needs to be.
`reuse_freed_memory()` turns that off for the process.
"""

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # a trim threshold of -1 turns trimming off (mallopt(3))


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def reuse_freed_memory():
    """Keep large freed CPU buffers for reuse instead of returning them to the OS.

    * glibc `malloc` (used by PyTorch and XLA on Linux): buffers of any size come
      from one heap shared by all threads, and freed memory is never trimmed back
      to the OS. Before, XLA's 2.3 GB scratch buffer for a JAX training step of
      HAT-Net-Small at batch 8 was mapped afresh on every step: 570,000 page
      faults and 2-3 s of system time a step, which took 5.2-5.9 s; 4.0 s after.
    * TensorFlow: its best-fit-with-coalescing (BFC) allocator on the CPU, through
      `TF_CPU_ALLOCATOR_USE_BFC`; this takes effect only if TensorFlow has not yet
      created its CPU device, so call this before the first TensorFlow operation
      (an existing setting of the variable is left alone).

    The cost is a process that keeps its peak memory until it exits. Call it once at
    the start of a training or inference script.

    Returns:
        dict: what was applied, `{"glibc": bool, "tensorflow_bfc": bool}`.

    Example:

    ```python
    import hatnet_keras
    hatnet_keras.reuse_freed_memory()  # {'glibc': True, 'tensorflow_bfc': True}
    ```
    """
    applied = {"glibc": False, "tensorflow_bfc": False}
    libc = _glibc()
    if libc is not None:
        applied["glibc"] = all(
            libc.mallopt(parameter, value) == 1
            for parameter, value in (
                # Every thread allocates from the one heap: a thread's own arena
                # has heaps of at most 64 MiB and maps anything larger afresh.
                (_M_ARENA_MAX, 1),
                (_M_MMAP_MAX, 0),
                (_M_TRIM_THRESHOLD, _NEVER),
                (_M_TOP_PAD, 256 * 2**20),
            )
        )
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    applied["tensorflow_bfc"] = os.environ["TF_CPU_ALLOCATOR_USE_BFC"].lower() in ("true", "1")
    return applied
