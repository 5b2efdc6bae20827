"""Calling a layer's own sublayers from its `call`, without Keras' per-call cost on torch."""

import inspect

import keras

_TAKES_TRAINING = {}


def _takes_training(layer):
    cls = type(layer)
    if cls not in _TAKES_TRAINING:
        _TAKES_TRAINING[cls] = "training" in inspect.signature(cls.call).parameters
    return _TAKES_TRAINING[cls]


def _same_autocast_scope(parent, layer):
    """True where `layer.__call__` would keep the autocast scope `parent.call` runs in."""
    if getattr(type(layer), "_autocast_scope_free", False):
        return True
    # Two autocasting layers of the same dtypes run in the same scope. (A layer that
    # does not autocast may still enter one, of its compute dtype, at the top level.)
    return (
        layer.autocast
        and parent.autocast
        and layer.compute_dtype == parent.compute_dtype
        and layer.variable_dtype == parent.variable_dtype
    )


def _inputs_need_no_cast(layer, args):
    if not layer.autocast:
        return True
    for x in args:
        dtype = getattr(x, "dtype", None)
        if dtype is None:
            return False
        dtype = keras.backend.standardize_dtype(dtype)
        if "float" in dtype and dtype != layer.compute_dtype:
            return False
    return True


def direct_call_matches(parent, layer, args, kwargs):
    """Whether `layer.call(*args, **kwargs)` computes what `layer(*args, **kwargs)` would.

    Inside `parent.call`, `Layer.__call__` of a built sublayer that shares the
    parent's dtypes, gets inputs already in its compute dtype and is told whether
    it is training only checks, converts and records: the call itself is the same.
    """
    return (
        layer.built
        and _same_autocast_scope(parent, layer)
        and getattr(layer, "quantization_mode", None) is None
        # Set at construction under a `keras.RematScope`, which only `__call__` honours.
        and not getattr(layer, "_remat_mode", None)
        and layer.activity_regularizer is None
        and not (_takes_training(layer) and kwargs.get("training") is None)
        and _inputs_need_no_cast(layer, args)
    )


def call_sublayer(parent, layer, *args, **kwargs):
    """`layer(*args, **kwargs)` for a sublayer called from `parent.call`.

    On the torch backend, which runs eagerly, it calls `layer.call` directly where
    that gives the same result (`direct_call_matches`): `Layer.__call__` costs
    70-400 us of host time per call, and HAT-Net-Small calls about 270 sublayers
    in a forward pass, time in which a GPU waits. The other backends trace the
    model once, so they keep `Layer.__call__`.

    Args:
        parent: the layer whose `call` is running; its autocast scope is the one
            `layer` runs in.
        layer: a sublayer of `parent`.
        *args: the sublayer's positional arguments (tensors).
        **kwargs: its keyword arguments; pass `training` to layers that take it.

    Example (inside a layer's `call`):
    >>> class Residual(keras.layers.Layer):
    ...     def __init__(self, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.dense = keras.layers.Dense(4, dtype=self.dtype_policy)
    ...     def build(self, input_shape):
    ...         self.dense.build(input_shape)
    ...     def call(self, x):
    ...         return x + call_sublayer(self, self.dense, x)
    >>> tuple(Residual()(keras.ops.ones((2, 4))).shape)
    (2, 4)
    """
    if keras.backend.backend() == "torch" and direct_call_matches(parent, layer, args, kwargs):
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)
