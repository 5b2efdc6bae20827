"""reuse_freed_memory switches the process to allocators that keep freed CPU memory."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's allocator")
def test_tensorflow_uses_its_bfc_allocator_on_the_cpu_after_the_call():
    # Of TensorFlow's plain CPU allocators only the BFC one keeps statistics: they are
    # available exactly when it is used. oneDNN's custom ops, on by default on Intel
    # CPUs, bring an allocator that keeps statistics anyway, so they are turned off here.
    script = textwrap.dedent(
        """
        import os, sys
        os.environ.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
        import hatnet_keras, tensorflow as tf
        if sys.argv[1] == "call":
            print(hatnet_keras.reuse_freed_memory())
        tf.ones((256, 256)) * 2
        try:
            print("peak", tf.config.experimental.get_memory_info("CPU:0")["peak"])
        except ValueError as error:
            print("no statistics:", error)
        """
    )
    outputs = {
        mode: subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=300,
            env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"},
        ).stdout
        for mode in ("call", "no-call")
    }
    on_linux = sys.platform.startswith("linux")
    assert f"'glibc': {on_linux}, 'tensorflow_bfc': True" in outputs["call"]
    assert "peak" in outputs["call"]
    assert "no statistics" in outputs["no-call"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.skipif(keras.backend.backend() != "torch", reason="plain glibc: run once, in the torch run")
def test_large_blocks_freed_by_a_thread_are_reused_without_page_faults():
    # XLA allocates its scratch buffer from a worker thread; a thread's own glibc
    # arena maps a large block afresh each time unless the call is made.
    script = textwrap.dedent(
        """
        import ctypes, resource, sys, threading
        import hatnet_keras.cpu_memory as cpu_memory
        if sys.argv[1] == "call":
            cpu_memory.reuse_freed_memory()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        size = 96 * 2**20
        faults = []
        def allocate_twice():
            for _ in range(2):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                block = libc.malloc(size)
                ctypes.memset(block, 1, size)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                libc.free(block)
        thread = threading.Thread(target=allocate_twice)
        thread.start()
        thread.join()
        print(faults[1])
        """
    )
    second_faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", script, mode], capture_output=True, text=True,
                timeout=120, check=True,
            ).stdout.split()[-1]
        )
        for mode in ("call", "no-call")
    }
    pages = 96 * 2**20 // 4096
    assert second_faults["no-call"] > pages // 2
    assert second_faults["call"] < pages // 20
