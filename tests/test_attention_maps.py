"""H-MHSA's attention weights on request: `HierarchicalAttention.call(x, return_attention_scores=True)`."""

import numpy as np
import pytest

import keras

from hatnet_keras.layers import attention
from hatnet_keras.layers.attention import HierarchicalAttention

HEAD_DIM = 8
CHANNELS = 16  # two heads


def _numpy(value):
    return keras.ops.convert_to_numpy(value)


def _layer(grid_size, pool_ratio, height, width, dtype=None, seed=0):
    layer = HierarchicalAttention(HEAD_DIM, grid_size, pool_ratio, dtype=dtype)
    layer.build((None, height, width, CHANNELS))
    # Non-trivial norms and projections, so that the weights are far from uniform.
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return layer


def _inputs(height, width, seed=1):
    return np.random.default_rng(seed).normal(size=(2, height, width, CHANNELS)).astype("float32")


def _softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def _heads(x):
    """(batch, tokens, C) -> (batch, heads, tokens, head_dim)."""
    batch, tokens, _ = x.shape
    return x.reshape(batch, tokens, -1, HEAD_DIM).transpose(0, 2, 1, 3)


def _reference_local(qkv, grid):
    """Window attention weights `(batch, windows, heads, G*G, G*G)` in numpy, padded keys masked."""
    batch, height, width, _ = qkv.shape
    rows, cols = -(-height // grid), -(-width // grid)
    padded = np.zeros((batch, rows * grid, cols * grid, qkv.shape[-1]), "float32")
    padded[:, :height, :width] = qkv
    real = np.zeros((rows * grid, cols * grid), bool)
    real[:height, :width] = True
    weights = np.zeros((batch, rows * cols, CHANNELS // HEAD_DIM, grid * grid, grid * grid))
    for r in range(rows):
        for c in range(cols):
            cell = np.s_[r * grid : (r + 1) * grid, c * grid : (c + 1) * grid]
            window = padded[(slice(None), *cell)].reshape(batch, grid * grid, -1)
            query = _heads(window[..., :CHANNELS])
            key = _heads(window[..., CHANNELS : 2 * CHANNELS])
            logits = query @ key.transpose(0, 1, 3, 2) * HEAD_DIM**-0.5
            logits = np.where(real[cell].reshape(-1), logits, -np.inf)
            weights[:, r * cols + c] = _softmax(logits)
    return weights


def _reference_global(query, key):
    """`(batch, heads, positions, tokens)` weights from `(batch, ..., C)` queries and keys."""
    batch = query.shape[0]
    query = _heads(query.reshape(batch, -1, CHANNELS))
    key = _heads(key.reshape(batch, -1, CHANNELS))
    return _softmax(query @ key.transpose(0, 1, 3, 2) * HEAD_DIM**-0.5)


CASES = [  # grid, pool ratio, height, width
    pytest.param(7, 2, 10, 9, id="G7-padded"),
    pytest.param(4, 2, 8, 8, id="G4-divisible"),
    pytest.param(1, 1, 4, 5, id="global-only"),
]


@pytest.mark.parametrize("grid, ratio, height, width", CASES)
def test_output_with_scores_equals_the_default_output(grid, ratio, height, width):
    layer = _layer(grid, ratio, height, width)
    x = _inputs(height, width)
    default = layer(x)
    output, scores = layer(x, return_attention_scores=True)
    np.testing.assert_allclose(_numpy(output), _numpy(default), atol=2e-5)
    assert set(scores) == ({"global"} if grid == 1 else {"local", "global"})


@pytest.mark.parametrize("grid, ratio, height, width", CASES)
def test_weights_are_float32_row_stochastic_with_the_documented_shapes(grid, ratio, height, width):
    layer = _layer(grid, ratio, height, width)
    _, scores = layer(_inputs(height, width), return_attention_scores=True)
    heads = CHANNELS // HEAD_DIM
    if grid == 1:
        expected = {"global": (2, heads, height * width, height * width)}
    else:
        windows = -(-height // grid) * -(-width // grid)
        pooled = -(-height // ratio) * -(-width // ratio)
        expected = {
            "local": (2, windows, heads, grid * grid, grid * grid),
            "global": (2, heads, height * width, pooled),
        }
    for key, shape in expected.items():
        weights = _numpy(scores[key])
        assert weights.shape == shape
        assert keras.backend.standardize_dtype(scores[key].dtype) == "float32"
        assert weights.min() >= 0.0
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("grid, ratio, height, width", CASES)
def test_weights_match_a_numpy_reference(grid, ratio, height, width):
    layer = _layer(grid, ratio, height, width)
    x = _inputs(height, width)
    _, scores = layer(x, return_attention_scores=True)
    qkv = layer.qkv(layer.norm(x))
    if grid == 1:
        reference = _reference_global(
            _numpy(qkv[..., :CHANNELS]), _numpy(qkv[..., CHANNELS : 2 * CHANNELS])
        )
        np.testing.assert_allclose(_numpy(scores["global"]), reference, atol=1e-5)
        return
    np.testing.assert_allclose(
        _numpy(scores["local"]), _reference_local(_numpy(qkv), grid), atol=1e-5
    )
    g = layer.grid_norm(keras.ops.convert_to_tensor(x) + layer.local_attention(qkv))
    key_value = _numpy(layer.merge(g))
    reference = _reference_global(_numpy(layer.q(g)), key_value[..., :CHANNELS])
    np.testing.assert_allclose(_numpy(scores["global"]), reference, atol=1e-5)


def test_padded_keys_get_zero_local_weight():
    grid, height, width = 7, 10, 9  # padded to 14 x 14: 2 x 2 windows
    layer = _layer(grid, 2, height, width)
    _, scores = layer(_inputs(height, width), return_attention_scores=True)
    local = _numpy(scores["local"]).reshape(2, 2, 2, -1, grid, grid)  # rows, cols of windows
    real = np.zeros((14, 14), bool)
    real[:height, :width] = True
    for r in range(2):
        for c in range(2):
            keys_real = real[r * grid : (r + 1) * grid, c * grid : (c + 1) * grid]
            window = local[:, r, c]  # (batch, heads, queries, G, G)
            assert np.all(window[..., ~keys_real] == 0.0)
            assert np.all(window[..., keys_real] > 0.0)
    assert not real.all()  # the case does pad


def test_default_call_returns_a_tensor_and_never_computes_weights(monkeypatch):
    layer = _layer(7, 2, 10, 9)
    x = _inputs(10, 9)

    def refuse(*args, **kwargs):
        raise AssertionError("the default path computed attention weights")

    monkeypatch.setattr(attention, "attend_with_weights", refuse)
    output = layer(x)
    assert tuple(output.shape) == x.shape
    inputs = keras.Input((10, 9, CHANNELS))
    assert tuple(layer(inputs).shape) == (None, 10, 9, CHANNELS)


@pytest.mark.parametrize("size", [(10, 9), (None, None)])
def test_symbolic_call_gives_the_scores_shapes(size):
    layer = _layer(7, 2, 10, 9)
    inputs = keras.Input((*size, CHANNELS))
    output, scores = layer(inputs, return_attention_scores=True)
    assert tuple(output.shape) == (None, *size, CHANNELS)
    if size[0] is None:
        assert tuple(scores["local"].shape) == (None, None, 2, 49, 49)
        assert tuple(scores["global"].shape) == (None, 2, None, None)
    else:
        assert tuple(scores["local"].shape) == (None, 4, 2, 49, 49)
        assert tuple(scores["global"].shape) == (None, 2, 90, 25)
    model = keras.Model(inputs, scores)
    predicted = model.predict(_inputs(10, 9), verbose=0)
    assert predicted["local"].shape == (2, 4, 2, 49, 49)
    assert predicted["global"].shape == (2, 2, 90, 25)


def test_weights_stay_float32_under_mixed_precision():
    layer = _layer(7, 2, 10, 9, dtype="mixed_bfloat16")
    output, scores = layer(_inputs(10, 9), return_attention_scores=True)
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    for weights in scores.values():
        assert keras.backend.standardize_dtype(weights.dtype) == "float32"
        np.testing.assert_allclose(_numpy(weights).sum(axis=-1), 1.0, atol=1e-5)
