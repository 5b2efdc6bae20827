"""`call_sublayer`: sublayers called from a parent's `call` skip `Layer.__call__` on torch only
where that changes nothing."""

import numpy as np
import pytest

import keras
from keras import ops

from hatnet_keras.layers import GroupNorm, HATBlock, sublayer
from hatnet_keras.layers.kernels import PointwiseDense

ON_TORCH = keras.backend.backend() == "torch"


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def _block(seed=None, drop_path_rate=0.0):
    block = HATBlock(
        head_dim=8, grid_size=7, pool_ratio=2, expansion=2, kernel_size=3,
        drop_path_rate=drop_path_rate, seed=seed,
    )
    block.build((2, 14, 14, 16))
    return block


def _map(seed=0, shape=(2, 14, 14, 16)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _count_layer_calls(monkeypatch):
    calls = []
    real = keras.layers.Layer.__call__

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__call__", counting)
    return calls


def test_sublayers_run_without_layer_call_on_torch_only(monkeypatch):
    block = _block()
    x = _map()
    block(x)  # every sublayer built and called once the ordinary way
    calls = _count_layer_calls(monkeypatch)
    block(x, training=True)
    if ON_TORCH:
        assert calls == ["HATBlock"]
    else:
        # The traced backends keep Layer.__call__ for every sublayer.
        assert calls.count("GroupNorm") == 5 and calls.count("PointwiseDense") == 6
        assert {"HierarchicalAttention", "ConvFFN", "DropPath", "MergePooling"} <= set(calls)


@pytest.mark.skipif(not ON_TORCH, reason="only torch calls sublayers directly")
@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"], indirect=True)
def test_direct_sublayer_calls_give_what_layer_call_gives(monkeypatch, policy):
    # Two blocks with the same weights and seed, one through the direct calls, one not:
    # the same outputs bit for bit, in inference and in training (the seeded stochastic
    # depth draws the same masks, so `training` reached it on both).
    direct, ordinary = _block(seed=3, drop_path_rate=0.5), _block(seed=3, drop_path_rate=0.5)
    ordinary.set_weights(direct.get_weights())
    x = ops.cast(_map(seed=1), direct.compute_dtype)

    def outputs(block, training):
        return ops.convert_to_numpy(ops.cast(block(x, training=training), "float32"))

    expected = {}
    with monkeypatch.context() as patch:
        patch.setattr(sublayer, "direct_call_matches", lambda *args: False)
        calls = _count_layer_calls(patch)
        for training in (False, True):
            expected[training] = outputs(ordinary, training)
        assert "GroupNorm" in calls  # the patch took effect
    for training in (False, True):
        got = outputs(direct, training)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        np.testing.assert_array_equal(got, expected[training])
    assert not np.array_equal(expected[True], expected[False])


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_direct_call_only_where_layer_call_would_change_nothing(policy):
    parent = _block()
    built = PointwiseDense(4)
    built.build((1, 3, 3, 16))
    x = ops.ones((1, 3, 3, 16), dtype="bfloat16")

    def matches(layer, *args, **kwargs):
        return sublayer.direct_call_matches(parent, layer, args, kwargs)

    assert matches(built, x, training=False)
    # Layer.__call__ would build it, cast a float32 input, or fill in `training`.
    assert not matches(PointwiseDense(4), x, training=False)
    assert not matches(built, ops.ones((1, 3, 3, 16)), training=False)
    assert not matches(built, x)
    # ... or enter another autocast scope: float32 weights in a bfloat16 parent.
    float32_layer = PointwiseDense(4, dtype="float32")
    float32_layer.build((1, 3, 3, 16))
    assert not matches(float32_layer, ops.ones((1, 3, 3, 16)), training=False)
    # A layer that does not autocast can enter a scope of its own at the top level.
    layer_norm = keras.layers.LayerNormalization()
    layer_norm.build((1, 3, 3, 16))
    assert not matches(layer_norm, x)
    # GroupNorm takes any input dtype and never casts its weights: any scope will do.
    norm = GroupNorm()
    norm.build((1, 3, 3, 16))
    assert matches(norm, x) and matches(norm, ops.ones((1, 3, 3, 16)))


class _Recorder(keras.layers.Layer):
    """Reads a GroupNorm's and a Dense layer's weights while its own call runs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = GroupNorm(dtype=self.dtype_policy)
        self.dense = PointwiseDense(8, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.dense.build(input_shape)

    def call(self, x):
        self.seen = {
            "gamma": keras.backend.standardize_dtype(self.norm.gamma.value.dtype),
            "kernel": keras.backend.standardize_dtype(self.dense.kernel.value.dtype),
        }
        return sublayer.call_sublayer(self, self.norm, x)


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_group_norm_weights_stay_float32_inside_a_half_precision_scope(policy):
    # What lets GroupNorm run in its parent's autocast scope: its weights are not cast.
    recorder = _Recorder()
    x = _map(seed=2, shape=(1, 4, 4, 8))
    out = recorder(x)
    assert recorder.seen == {"gamma": "float32", "kernel": "float16"}
    alone = GroupNorm()
    alone.build((1, 4, 4, 8))
    alone.set_weights(recorder.norm.get_weights())
    np.testing.assert_array_equal(
        ops.convert_to_numpy(out), ops.convert_to_numpy(alone(ops.cast(x, "float16")))
    )


# The model calls its top-level layers (DirectCallOnTorch): stem, blocks, downsampling.
TOP_LEVEL = {"Stem", "HATBlock", "Downsample"}


def _reduced_model(drop_path_rate=0.0):
    from conftest import build_reduced

    keras.utils.set_random_seed(0)
    return build_reduced(input_shape=(32, 32, 3), drop_path_rate=drop_path_rate)


def test_model_calls_its_layers_without_layer_call_on_torch_only(monkeypatch):
    model = _reduced_model()
    images = _map(shape=(2, 32, 32, 3))
    model(images)
    calls = _count_layer_calls(monkeypatch)
    model(images, training=True)
    if ON_TORCH:
        # The model itself, and Keras' own head layers, still go through Layer.__call__.
        assert not TOP_LEVEL & set(calls)
        assert calls[0] == "Functional" and "Dense" in calls
    else:
        assert TOP_LEVEL <= set(calls)


@pytest.mark.skipif(not ON_TORCH, reason="only torch calls the model's layers directly")
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
def test_direct_top_level_calls_give_what_layer_call_gives(monkeypatch, policy):
    model = _reduced_model(drop_path_rate=0.5)
    images = _map(seed=4, shape=(2, 32, 32, 3))

    def outputs(training):
        # The same draws of the stochastic depth on both sides.
        keras.utils.set_random_seed(7)
        return ops.convert_to_numpy(model(images, training=training))

    expected = {}
    with monkeypatch.context() as patch:
        patch.setattr(
            sublayer, "direct_call_training", lambda *args: sublayer._NO_DIRECT_CALL
        )
        calls = _count_layer_calls(patch)
        for training in (None, False, True):
            expected[training] = outputs(training)
        assert "HATBlock" in calls  # the patch took effect
    for training in (None, False, True):
        got = outputs(training)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        np.testing.assert_array_equal(got, expected[training])
    assert not np.array_equal(expected[True], expected[False])


class _Probe(keras.layers.Layer):
    """Runs `check()` from inside its own call and keeps the result."""

    def __init__(self, check, **kwargs):
        super().__init__(**kwargs)
        self.check = check

    def call(self, x, training=None):
        self.result = self.check()
        return x


@pytest.mark.skipif(not ON_TORCH, reason="the direct call is decided on torch tensors")
def test_direct_top_level_call_only_where_layer_call_would_only_call():
    block = _block()
    x = ops.convert_to_tensor(_map())
    no = sublayer._NO_DIRECT_CALL

    def decide(block_args, block_kwargs, training=True, layer=block):
        probe = _Probe(lambda: sublayer.direct_call_training(layer, block_args, block_kwargs))
        probe(x, training=training)
        return probe.result

    # Outside any call, Layer.__call__ opens a context (and clears losses).
    assert sublayer.direct_call_training(block, (x,), {"training": True}) is no
    # Inside one, `training` comes from the argument or the context.
    assert decide((x,), {"training": True}) is True
    assert decide((x,), {}, training=False) is False
    assert decide((x,), {}, training=None) is None
    # An explicit value that differs from the context's would be stored in it.
    assert decide((x,), {"training": False}, training=True) is no
    # Layer.__call__ would cast, build, or meet a symbolic input or a mask.
    assert decide((ops.cast(x, "float16"),), {}) is no
    unbuilt = HATBlock(head_dim=8, grid_size=7, pool_ratio=2, expansion=2, kernel_size=3)
    assert decide((x,), {}, layer=unbuilt) is no
    assert decide((keras.KerasTensor((2, 14, 14, 16)),), {}) is no
    masked = ops.convert_to_tensor(_map())
    masked._keras_mask = ops.ones((2, 14, 14), dtype="bool")
    assert decide((masked,), {}) is no
    assert decide((x,), {"mask": None}) is no
