"""Calling HAT-Net's layers without Keras' per-call cost on the eager torch backend.

* `call_sublayer`: a layer calling its own sublayers from its `call`.
* `DirectCallOnTorch`: a layer called by a model, as a functional model calls each
  of its layers.
"""

import inspect

import keras

# Keras keeps the current call context and autocast scope here; `Layer.__call__`
# reads both, and so must a check of what it would do.
from keras.src.backend.common import global_state

from hatnet_keras.layers import eager

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


def _call_leaves_layer_unchanged(layer, args):
    """The checks `Layer.__call__` makes of the layer and its positional inputs, passed."""
    return (
        layer.built
        and getattr(layer, "quantization_mode", None) is None
        # Set at construction under a `keras.RematScope`, which only `__call__` honours.
        and not getattr(layer, "_remat_mode", None)
        and layer.activity_regularizer is None
        and _inputs_need_no_cast(layer, args)
    )


def direct_call_matches(parent, layer, args, kwargs):
    """Whether `layer.call(*args, **kwargs)` computes what `layer(*args, **kwargs)` would.

    Inside `parent.call`, `Layer.__call__` of a built sublayer that shares the
    parent's dtypes, gets inputs already in its compute dtype and is told whether
    it is training only checks, converts and records: the call itself is the same.
    """
    return (
        _same_autocast_scope(parent, layer)
        and not (_takes_training(layer) and kwargs.get("training") is None)
        and _call_leaves_layer_unchanged(layer, args)
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
    >>> import keras
    >>> from hatnet_keras.layers.sublayer import call_sublayer
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


_NO_DIRECT_CALL = object()


def _keeps_autocast_scope(layer):
    """True where `Layer.__call__` would run `layer.call` in the current autocast scope."""
    scope = global_state.get_global_attribute("autocast_scope")
    if scope is None:
        return layer.compute_dtype == layer.variable_dtype
    return (
        layer.autocast
        and keras.backend.is_float_dtype(layer.compute_dtype)
        and scope.dtype == layer.compute_dtype
    )


def direct_call_training(layer, args, kwargs):
    """The `training` value of a direct `layer.call` equal to `layer(*args, **kwargs)`.

    For a layer called from inside another layer's or a model's call, on eager
    torch tensors: `Layer.__call__` would resolve `training` from the argument or
    the enclosing call context, leave that context as it is, keep the autocast
    scope, build and cast nothing. Returns None where `training` resolves to None,
    and `_NO_DIRECT_CALL` where `Layer.__call__` would do more than call.
    """
    context = global_state.get_global_attribute("current_call_ctx")
    if (
        context is None  # Layer.__call__ would open a context and clear the losses
        or not set(kwargs) <= {"training"}
        or getattr(layer, "_call_context_args", None) != {"training"}
        or layer.input_spec is not None
        or keras.distribution.distribution() is not None
    ):
        return _NO_DIRECT_CALL
    if not all(eager.is_torch_tensor(x) and getattr(x, "_keras_mask", None) is None
               for x in args):
        return _NO_DIRECT_CALL
    training = context.get_value("training")
    # An explicit value is stored in the context by Layer.__call__: it must match.
    if "training" in kwargs and kwargs["training"] != training:
        return _NO_DIRECT_CALL
    if not (_keeps_autocast_scope(layer) and _call_leaves_layer_unchanged(layer, args)):
        return _NO_DIRECT_CALL
    return training


class DirectCallOnTorch:
    """Mixin for a layer that a model calls: on eager torch, `call` without `Layer.__call__`.

    A functional model calls each of its layers through `Layer.__call__`, which on
    the torch backend costs a few hundred microseconds of host time per call
    (HAT-Net-Small's model calls 23 layers in a forward pass). Inside a model's
    call, on torch tensors, where `Layer.__call__` would only resolve `training`
    and call (`direct_call_training`), this calls `call` directly. Everywhere else
    (symbolic tensors, other backends, a first call that builds) it is
    `Layer.__call__`. Put it before `keras.layers.Layer` in the bases.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.sublayer import DirectCallOnTorch
    >>> class Scale(DirectCallOnTorch, keras.layers.Layer):
    ...     def call(self, x, training=None):
    ...         return 2 * x
    >>> inputs = keras.Input((3,))
    >>> model = keras.Model(inputs, Scale()(inputs))
    >>> keras.ops.convert_to_numpy(model(keras.ops.ones((1, 3)), training=True)).tolist()
    [[2.0, 2.0, 2.0]]
    """

    def __call__(self, *args, **kwargs):
        if keras.backend.backend() == "torch":
            training = direct_call_training(self, args, kwargs)
            if training is not _NO_DIRECT_CALL:
                if training is not None and _takes_training(self):
                    return self.call(*args, training=training)
                return self.call(*args)
        return super().__call__(*args, **kwargs)
