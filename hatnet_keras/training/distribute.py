"""Data-parallel training on every local device: TensorFlow and JAX."""

import contextlib

import keras


@contextlib.contextmanager
def data_parallel(enabled=True):
    """Context in which to build, compile and fit a model data-parallel on all local devices.

    * TensorFlow: a `tf.distribute.MirroredStrategy` scope over every GPU
      (or, with no GPU, every logical CPU device): variables mirrored,
      gradients all-reduced.
    * JAX: `keras.distribution.DataParallel` over all devices, made the
      current distribution (variables replicated, batches split).
    * torch: not supported; raises `ValueError`.

    The batch size of the datasets is the global batch, split across the
    devices. With `enabled=False` this does nothing (one device).

    Yields:
        The strategy or distribution, or None when disabled.

    Example:

    ```python
    with data_parallel():
        model = hatnet_keras.HATNetTiny(classes=10)
        model.compile(optimizer="adamw", loss="categorical_crossentropy")
        model.fit(train_ds, epochs=2)
    ```
    """
    if not enabled:
        yield None
        return
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(_tensorflow_devices())
        with strategy.scope():
            yield strategy
    elif backend == "jax":
        distribution = keras.distribution.DataParallel()
        with distribution.scope():
            yield distribution
    else:
        raise _unsupported(backend)


def _unsupported(backend):
    return ValueError(
        f"Multi-device training is supported with the TensorFlow backend "
        f"(tf.distribute.MirroredStrategy) and the JAX backend "
        f"(keras.distribution.DataParallel), not with {backend!r}: torchrun / "
        "DistributedDataParallel is not supported here. Set KERAS_BACKEND=tensorflow "
        "or jax, or train without --distribute."
    )


def _tensorflow_devices():
    """Names of the GPUs, or with none of the logical CPUs (MirroredStrategy only takes one CPU)."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def replica_count(distribute=True):
    """Number of devices `data_parallel(distribute)` splits each batch over.

    Raises the same `ValueError` as `data_parallel` on a backend without support.

    Example:
    >>> from hatnet_keras.training import replica_count
    >>> replica_count(False)
    1
    """
    if not distribute:
        return 1
    backend = keras.config.backend()
    if backend == "tensorflow":
        return len(_tensorflow_devices())
    if backend == "jax":
        return len(keras.distribution.list_devices())
    raise _unsupported(backend)


def pad_batches(dataset, multiple):
    """Pads every batch of `(images, labels)` to a multiple of `multiple` rows, with weight 0.

    JAX's `DataParallel` splits each batch evenly over the devices, so a last
    partial validation batch (e.g. 3 images on 2 devices) cannot be placed.
    The padded rows are zeros with sample weight 0, so they count in no
    metric; the dataset yields `(images, labels, sample_weights)`.

    Example (in practice `multiple` is `replica_count()`):
    >>> import tensorflow as tf
    >>> from hatnet_keras.training import pad_batches
    >>> images, labels = tf.zeros([3, 4, 4, 3]), tf.one_hot([0, 1, 1], 2)
    >>> val_ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    >>> val_ds = pad_batches(val_ds, 2)
    >>> [weights.numpy().tolist() for _, _, weights in val_ds]
    [[1.0, 1.0], [1.0, 0.0]]
    """
    import tensorflow as tf

    def pad(images, labels):
        count = tf.shape(images)[0]
        extra = (multiple - count % multiple) % multiple
        weights = tf.concat([tf.ones([count]), tf.zeros([extra])], axis=0)
        images = tf.pad(images, [[0, extra], [0, 0], [0, 0], [0, 0]])
        labels = tf.pad(labels, [[0, extra], [0, 0]])
        return images, labels, weights

    return dataset.map(pad)
