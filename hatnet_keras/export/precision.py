"""A float32 copy of a model, for export whatever precision it was trained in."""

import contextlib

import keras

from hatnet_keras.weights import transfer_weights


@contextlib.contextmanager
def _global_dtype_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _float32_layer(layer):
    config = layer.get_config()
    if "dtype" in config:
        config["dtype"] = "float32"
    return layer.__class__.from_config(config)


def inference_model(model, input_shape=(None, None, 3)):
    """A float32 copy of `model` with the same weights and a resizable input.

    The copy is rebuilt from the model's config with every layer under the
    "float32" dtype policy (variables and compute), so a model trained under
    `mixed_float16` or `mixed_bfloat16` exports as a plain float32 graph; the
    weights are copied by variable path. Its image input takes `input_shape`,
    by default any height and width, which HAT-Net supports.

    Args:
        model: a single-input model built by `hatnet_keras` (head, headless or
            pyramid), under any dtype policy.
        input_shape: `(height, width, channels)` of the copy's input; None
            leaves a side free.

    Returns:
        A `keras.Model` whose variables and layers are all float32.

    Example:
    >>> import keras
    >>> import hatnet_keras
    >>> from hatnet_keras.export import inference_model
    >>> keras.config.set_dtype_policy("mixed_float16")
    >>> trained = hatnet_keras.HATNet(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), head_dim=8,
    ...                               expansions=(2, 3, 2, 2), grid_sizes=(8, 7, 7, 1),
    ...                               pool_ratios=(8, 4, 2, 1), kernel_sizes=(5, 3, 5, 3))
    >>> keras.config.set_dtype_policy("float32")
    >>> exported = inference_model(trained)
    >>> {v.dtype for v in exported.weights}, exported.input_shape
    ({'float32'}, (None, None, None, 3))
    >>> block = "stage1_block1"
    >>> trained.get_layer(block).compute_dtype, exported.get_layer(block).compute_dtype
    ('float16', 'float32')
    """
    if len(model.inputs) != 1:
        raise ValueError(
            f"Export takes a model with one image input; {model.name!r} has "
            f"{len(model.inputs)} inputs."
        )
    with _global_dtype_policy("float32"):
        images = keras.Input(shape=input_shape, name=model.inputs[0].name)
        clone = keras.models.clone_model(
            model, input_tensors=images, clone_function=_float32_layer
        )
    transfer_weights(model, clone)
    not_float32 = sorted({v.path for v in clone.weights if v.dtype != "float32"})
    if not_float32:
        raise ValueError(f"These variables did not become float32: {not_float32}")
    return clone
