"""The functional HAT-Net model: shapes, any input size, pyramid, precision, saving, errors."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import ops

import hatnet_keras
from hatnet_keras.layers import HATBlock
from conftest import build_reduced, forward


@pytest.fixture(scope="module")
def flexible_model():
    return build_reduced(input_shape=(None, None, 3), include_preprocessing=True)


def _images(batch, height, width, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype("float32")


def test_default_model_outputs_probabilities():
    model = build_reduced()
    assert model.input_shape == (None, 224, 224, 3)
    probabilities = forward(model, _images(2, 224, 224))
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (50, 77), (97, 64), (225, 230)])
def test_any_input_size_gives_finite_outputs_and_pyramid(flexible_model, size):
    features = hatnet_keras.pyramid_model(flexible_model)
    outputs = forward(features, _images(1, *size))
    assert sorted(outputs) == ["P2", "P3", "P4", "P5"]
    height, width = size
    for level, (stride, channels) in enumerate(zip((4, 8, 16, 32), (16, 32, 48, 64))):
        out = outputs[f"P{level + 2}"]
        assert out.shape == (1, -(-height // stride), -(-width // stride), channels)
        assert np.all(np.isfinite(out))


def test_pyramid_outputs_of_a_headless_model_at_224():
    model = build_reduced(include_top=False)
    assert model.input_shape == (None, None, None, 3)
    outputs = hatnet_keras.pyramid_outputs(model)
    shapes = {key: tuple(value.shape) for key, value in outputs.items()}
    assert shapes == {
        "P2": (None, None, None, 16),
        "P3": (None, None, None, 32),
        "P4": (None, None, None, 48),
        "P5": (None, None, None, 64),
    }
    with pytest.raises(ValueError, match="hatnet_keras"):
        hatnet_keras.pyramid_outputs(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


@pytest.mark.parametrize(
    "pooling, expected", [(None, (2, 2, 3, 64)), ("avg", (2, 64)), ("max", (2, 64))]
)
def test_headless_pooling(pooling, expected):
    model = build_reduced(include_top=False, pooling=pooling, input_shape=(64, 96, 3))
    assert forward(model, _images(2, 64, 96)).shape == expected


def test_input_tensor_and_preprocessing_matches_manual_normalisation():
    inputs = keras.Input((64, 64, 3))
    with_pre = build_reduced(input_tensor=inputs, classifier_activation=None)
    without = build_reduced(
        input_shape=(64, 64, 3), include_preprocessing=False, classifier_activation=None
    )
    without.set_weights(with_pre.get_weights())
    images = _images(2, 64, 64)
    mean = 255 * np.array([0.485, 0.456, 0.406], "float32")
    std = 255 * np.array([0.229, 0.224, 0.225], "float32")
    np.testing.assert_allclose(
        forward(with_pre, images),
        forward(without, (images - mean) / std),
        atol=1e-4,
    )


def test_predict_on_arrays_and_on_a_dataset():
    model = build_reduced(input_shape=(48, 48, 3))
    images = _images(5, 48, 48)
    from_arrays = model.predict(images, batch_size=2, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(2)
    np.testing.assert_allclose(model.predict(dataset, verbose=0), from_arrays, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (16, 64, 3)}, "at least 32"),
        ({"input_shape": (224, 224, 1)}, "3 channels"),
        ({"input_shape": (224, 224)}, "height, width, 3"),
        ({"pooling": "mean", "include_top": False}, "pooling"),
        ({"weights": "imagenet", "classes": 10}, "classes=1000"),
        ({"weights": "model.onnx"}, ".pth"),
    ],
)
def test_impossible_arguments_raise_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_reduced(**kwargs)


def test_too_small_image_in_a_flexible_model_raises(flexible_model):
    with pytest.raises(ValueError, match="at least 32"):
        flexible_model(_images(1, 24, 64))


def test_mismatched_architecture_arguments_raise():
    with pytest.raises(ValueError, match="one value per stage"):
        hatnet_keras.HATNet(
            dims=(16, 32, 48), depths=(1, 1, 1), head_dim=8, expansions=(2, 2, 2),
            grid_sizes=(8, 7, 7), pool_ratios=(8, 4, 2), kernel_sizes=(3, 3, 3),
        )


def test_drop_path_rates_grow_linearly_to_the_last_block():
    model = build_reduced(drop_path_rate=0.3)
    rates = [layer.drop_path_rate for layer in model.layers if isinstance(layer, HATBlock)]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.3, 5))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_variables_and_logits_float32(policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = build_reduced(input_shape=(64, 64, 3), classifier_activation=None)
    finally:
        keras.config.set_dtype_policy("float32")
    compute = policy.split("_")[1]
    assert {v.dtype for v in model.weights} == {"float32"}
    for layer in model._flatten_layers(include_self=False):
        if layer.name not in ("preprocessing", "predictions"):
            assert layer.dtype_policy.name == policy, layer.name
    block = model.get_layer("stage3_block2")
    features = keras.Model(model.input, [block.output, model.output])
    stage, logits = forward(features, _images(2, 64, 64))
    assert keras.backend.standardize_dtype(stage.dtype) == compute
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(logits))


def test_keras_file_round_trip_gives_identical_outputs(tmp_path):
    model = build_reduced(input_shape=(None, None, 3), drop_path_rate=0.1)
    path = tmp_path / "reduced.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode stays on
    assert type(loaded) is type(model)
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(model.get_config(), sort_keys=True)
    images = _images(2, 64, 80)
    np.testing.assert_allclose(forward(loaded, images), forward(model, images), atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="XLA compilation is a TensorFlow/JAX feature"
)
def _weights_after_one_fit_step(jit_compile):
    # At 64 px every pooled map has several tokens (at 32 px a single key would make
    # the global softmax constant and give the queries no gradient). No dropout: the
    # step draws no random numbers.
    keras.utils.set_random_seed(0)
    model = build_reduced(input_shape=(64, 64, 3), classifier_activation=None, dropout_rate=0.0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),  # no weight decay: only a gradient moves a weight
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    before = [w.copy() for w in model.get_weights()]
    labels = np.eye(10, dtype="float32")[[1, 3]]
    history = model.fit(_images(2, 64, 64), labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    return before, model.get_weights()


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="XLA compilation is a TensorFlow/JAX feature"
)
def test_one_jit_compiled_fit_step_changes_every_weight_as_without_xla():
    before, after = _weights_after_one_fit_step(jit_compile=True)
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert all(changed), "every weight receives a gradient"
    if keras.backend.backend() == "tensorflow":
        # Under XLA on a CPU the depthwise convolutions take another formulation.
        _, without_xla = _weights_after_one_fit_step(jit_compile=False)
        for xla_weight, weight in zip(after, without_xla):
            np.testing.assert_allclose(xla_weight, weight, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a tf.function graph")
def test_a_graph_with_unknown_height_and_width_matches_eager(flexible_model):
    # Padding amounts become tensors in such a graph (as in a SavedModel signature).
    graph = tf.function(
        flexible_model, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)]
    )
    for size in [(50, 77), (64, 64)]:
        images = _images(2, *size)
        np.testing.assert_allclose(
            graph(images).numpy(), ops.convert_to_numpy(flexible_model(images)), atol=1e-6
        )
