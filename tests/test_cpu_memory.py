"""reuse_freed_memory switches the process to allocators that keep freed CPU memory."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's allocator")
def test_tensorflow_uses_its_bfc_allocator_on_the_cpu_after_the_call():
    # Only the BFC allocator keeps statistics: they are available exactly when it is used.
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
            env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        ).stdout
        for mode in ("call", "no-call")
    }
    on_linux = sys.platform.startswith("linux")
    assert f"'glibc': {on_linux}, 'tensorflow_bfc': True" in outputs["call"]
    assert "peak" in outputs["call"]
    assert "no statistics" in outputs["no-call"]
