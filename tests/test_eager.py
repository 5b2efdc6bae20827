"""hatnet_keras.layers.eager: the same results as keras.ops, without Keras' dispatch on torch."""

import numpy as np
import pytest

import keras
from keras import ops

from hatnet_keras.layers import eager

BACKEND = keras.backend.backend()
X = np.arange(2 * 3 * 4 * 6, dtype="float32").reshape(2, 3, 4, 6)
X_IMAGES = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype("float32")

CASES = {
    "reshape": (lambda m, x: m.reshape(x, (2, -1, 6))),
    "reshape_to_int": (lambda m, x: m.reshape(x, 144)),
    "reshape_to_shape_of_tensor": (lambda m, x: m.reshape(x, ops.shape(x)[:2] + (24,))),
    "transpose": (lambda m, x: m.transpose(x, (0, 3, 1, 2))),
    "squeeze": (lambda m, x: m.squeeze(x[:1], axis=0)),
    "split_sections": (lambda m, x: m.split(x, 3, axis=-1)),
    "split_indices": (lambda m, x: m.split(x, [1, 4], axis=-1)),
    "cast_float16": (lambda m, x: m.cast(x, "float16")),
    "cast_same_dtype": (lambda m, x: m.cast(x, "float32")),
    "silu": (lambda m, x: m.silu(x / 50.0)),
}


def _numpy(result):
    if isinstance(result, (list, tuple)):
        return [ops.convert_to_numpy(part) for part in result]
    return [ops.convert_to_numpy(result)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_function_equals_its_keras_op(case):
    x = ops.convert_to_tensor(X)
    expected = _numpy(CASES[case](ops, x))
    got = _numpy(CASES[case](eager, x))
    assert len(got) == len(expected)
    for part, want in zip(got, expected):
        assert part.dtype == want.dtype
        np.testing.assert_array_equal(part, want)


def test_cast_reads_a_variable():
    variable = keras.Variable(X[0, 0], dtype="float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(eager.cast(variable, "float32")), X[0, 0])
    half = eager.cast(variable, "bfloat16")
    assert keras.backend.standardize_dtype(half.dtype) == "bfloat16"


def test_symbolic_tensors_go_through_keras_ops():
    x = keras.KerasTensor((None, 3, 4, 6))
    out = eager.transpose(eager.reshape(x, (-1, 12, 6)), (0, 2, 1))
    assert isinstance(out, keras.KerasTensor)
    assert out.shape == (None, 6, 12)
    parts = eager.split(x, [2], axis=-1)
    assert [part.shape for part in parts] == [(None, 3, 4, 2), (None, 3, 4, 4)]


@pytest.mark.skipif(BACKEND != "torch", reason="elsewhere keras.ops.split raises its backend's error")
def test_split_into_unequal_sections_is_refused():
    with pytest.raises(ValueError):
        eager.split(ops.convert_to_tensor(X), 4, axis=-1)


@pytest.mark.skipif(BACKEND != "torch", reason="the native path is the torch backend's")
def test_on_torch_no_keras_op_is_dispatched(monkeypatch):
    # Each function calls PyTorch directly: the keras.ops namesakes must not run.
    for name in ("reshape", "transpose", "squeeze", "split", "cast", "silu"):
        monkeypatch.setattr(eager.ops, name, _refuse(name))
    x = ops.convert_to_tensor(X)
    for case in CASES.values():
        case(eager, x)
    view = eager.transpose(x, (0, 3, 1, 2))
    assert view.data_ptr() == x.data_ptr()  # a view, as Keras' torch backend gives


@pytest.mark.skipif(BACKEND != "torch", reason="the native path is the torch backend's")
def test_on_torch_a_forward_pass_calls_none_of_these_keras_ops(monkeypatch):
    from conftest import build_reduced

    model = build_reduced(input_shape=(224, 224, 3))
    expected = ops.convert_to_numpy(model(X_IMAGES))
    for name in ("reshape", "transpose", "squeeze", "split", "broadcast_to", "cast", "silu",
                 "dot_product_attention", "layer_normalization", "conv", "depthwise_conv",
                 "average_pool", "pad"):
        monkeypatch.setattr(keras.ops, name, _refuse(name))
    np.testing.assert_array_equal(ops.convert_to_numpy(model(X_IMAGES)), expected)


def _refuse(name):
    def refused(*args, **kwargs):
        raise AssertionError(f"keras.ops.{name} was called")

    return refused
