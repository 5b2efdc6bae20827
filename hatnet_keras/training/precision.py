"""Mixed precision and XLA compilation settings for training."""

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_BACKENDS = ("tensorflow", "jax")


def set_precision(precision):
    """Sets the global Keras dtype policy; build models after calling it.

    `mixed_float16` and `mixed_bfloat16` compute in 16 bits and keep float32
    variables; HAT-Net's head and GroupNorm statistics stay float32. Under
    `mixed_float16`, `model.compile` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer` (dynamic loss scaling), so float16
    gradients do not underflow.

    Example:
    >>> import hatnet_keras
    >>> from hatnet_keras.training import set_precision
    >>> set_precision("mixed_bfloat16")
    >>> ffn = hatnet_keras.layers.ConvFFN(expansion=4, kernel_size=3)  # or a whole HAT-Net
    >>> ffn.compute_dtype, ffn.variable_dtype
    ('bfloat16', 'float32')
    >>> set_precision("float32")
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
    keras.mixed_precision.set_dtype_policy(precision)


def resolve_jit_compile(jit_compile):
    """The `jit_compile` argument for `model.compile` on the current backend.

    None picks the faster setting: TensorFlow without a GPU runs its graph
    without XLA, which trained HAT-Net-Small faster on a 2-core CPU (batch 16,
    fit steps, two sittings of two rounds each: 3.29, 3.45 and 3.64, 3.72
    images/s against 2.70, 2.78 and 3.10, 3.08 with XLA) in less memory (5.8
    against 7.7 GiB); everywhere else Keras chooses ("auto": XLA on TensorFlow
    and JAX when every layer supports it, off on torch). True asks for XLA and
    is refused on torch, whose `jit_compile` would mean `torch.compile`, which
    this package does not support for HAT-Net training.

    Example:

    ```python
    model.compile(optimizer, loss, jit_compile=resolve_jit_compile(True))
    ```
    """
    backend = keras.config.backend()
    if jit_compile is None:
        if backend == "tensorflow" and not gpu_available():
            return False
        return "auto"
    if jit_compile and backend not in JIT_BACKENDS:
        raise ValueError(
            f"XLA compilation (jit_compile=True) is available with the TensorFlow and JAX "
            f"backends; the {backend!r} backend would use torch.compile, which is not "
            "supported here. Leave jit_compile off or set KERAS_BACKEND=tensorflow or jax."
        )
    return bool(jit_compile)


def gpu_available():
    """Whether the current Keras backend sees a GPU.

    Example:

    ```python
    if gpu_available():
        set_precision("mixed_float16")
    ```
    """
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False
