"""Training pieces: schedule, AdamW groups, precision + XLA steps, heads, fine-tuning."""

import math

import numpy as np
import pytest

import keras

from hatnet_keras.training import (
    TrainConfig,
    WarmupCosineDecay,
    build_classifier,
    build_optimizer,
    compile_for_training,
    gpu_available,
    learning_rate_schedule,
    no_decay_variables,
    resolve_jit_compile,
    scaled_learning_rate,
    set_precision,
    with_softmax,
)
from hatnet_keras.layers import HATBlock
from conftest import build_reduced, forward, reduced_architecture

BACKEND = keras.config.backend()
SIZE = 48


@pytest.fixture(autouse=True)
def float32_policy_afterwards():
    yield
    keras.config.set_dtype_policy("float32")


def _batch(count=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")
    labels = np.eye(classes, dtype="float32")[np.arange(count) % classes]
    return images, labels


def test_schedule_warms_up_linearly_then_decays_by_half_cosine():
    schedule = WarmupCosineDecay(
        1e-3, total_steps=110, warmup_steps=10, warmup_learning_rate=1e-6, final_learning_rate=1e-5
    )
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(0) == pytest.approx(1e-6)
    assert rate(5) == pytest.approx((1e-6 + 1e-3) / 2)
    assert rate(10) == pytest.approx(1e-3)
    assert rate(60) == pytest.approx((1e-3 + 1e-5) / 2)  # half way down the cosine
    assert rate(85) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(0.75 * math.pi)) / 2)
    assert rate(110) == pytest.approx(1e-5)
    assert rate(500) == pytest.approx(1e-5)
    rates = [rate(step) for step in range(111)]
    assert all(a < b for a, b in zip(rates[:10], rates[1:11]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_schedule_serialises_alone_and_inside_the_optimizer():
    schedule = WarmupCosineDecay(5e-4, total_steps=300, warmup_steps=20)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineDecay)
    assert restored.get_config() == schedule.get_config()
    config = keras.optimizers.AdamW(learning_rate=schedule).get_config()
    assert config["learning_rate"]["class_name"] == "WarmupCosineDecay"
    optimizer = keras.optimizers.AdamW.from_config(config)
    assert float(optimizer.learning_rate) == pytest.approx(1e-6)  # the schedule at step 0
    for step in (0, 7, 20, 150, 300):
        assert float(restored(step)) == pytest.approx(float(schedule(step)))


def test_recipe_learning_rate_and_epoch_based_schedule():
    assert scaled_learning_rate(512) == pytest.approx(5e-4)
    assert scaled_learning_rate(1024) == pytest.approx(1e-3)
    config = TrainConfig(output="unused", architecture={}, epochs=300, batch_size=128)
    schedule = learning_rate_schedule(config, steps_per_epoch=10)
    assert schedule.peak_learning_rate == pytest.approx(1.25e-4)
    assert (schedule.warmup_steps, schedule.total_steps) == (50, 3000)
    assert float(schedule(0)) == pytest.approx(1e-6)
    assert float(schedule(3000)) == pytest.approx(1e-5)


def test_the_spared_variables_are_all_biases_and_norm_parameters():
    model = build_reduced(input_shape=(SIZE, SIZE, 3))
    spared = no_decay_variables(model)
    assert {variable.name for variable in spared} == {"bias", "gamma", "beta"}
    assert any("/norm/" in v.path for v in spared) and any(v.path == "predictions/bias" for v in spared)
    decayed = [v for v in model.trainable_variables if not any(v is s for s in spared)]
    assert decayed and all(v.name == "kernel" and len(v.shape) >= 2 for v in decayed)


def test_weight_decay_spares_biases_and_norm_parameters():
    # One HAT-Net block and a head: every kind of variable, few enough for eager updates.
    inputs = keras.Input((7, 7, 16))
    x = HATBlock(head_dim=8, grid_size=7, pool_ratio=2, expansion=2, kernel_size=3)(inputs)
    x = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, x)
    learning_rate, weight_decay = 0.1, 0.5
    optimizer = build_optimizer(model, learning_rate, weight_decay=weight_decay)
    assert optimizer.epsilon == 1e-8
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    # With zero gradients Adam's step is exactly zero: only weight decay moves a variable.
    zeros = [keras.ops.zeros(v.shape, dtype=v.dtype) for v in model.trainable_variables]
    optimizer.apply(zeros, model.trainable_variables)
    kinds = set()
    for old, variable in zip(before, model.trainable_variables):
        new = keras.ops.convert_to_numpy(variable)
        kinds.add(variable.name)
        if len(variable.shape) <= 1:
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
        else:
            np.testing.assert_allclose(
                new, old * (1 - learning_rate * weight_decay), rtol=1e-5, atol=1e-7, err_msg=variable.path
            )
    assert kinds == {"kernel", "bias", "gamma", "beta"}


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_steps_stay_finite(precision, tmp_path):
    jit_compile = BACKEND in ("tensorflow", "jax")  # torch: XLA is not available
    keras.utils.set_random_seed(0)  # float16 loss scaling may skip a step: make it repeatable
    set_precision(precision)
    model = build_classifier(reduced_architecture(), classes=3, image_size=SIZE, drop_path_rate=0.1)
    config = TrainConfig(output=str(tmp_path), architecture={}, jit_compile=jit_compile)
    compile_for_training(model, config, WarmupCosineDecay(1e-3, total_steps=4, warmup_steps=1))
    if precision == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.jit_compile is jit_compile
    images, labels = _batch(8)
    kernel = model.get_layer("stage1_block1").attn.qkv.kernel
    kernel_before = keras.ops.convert_to_numpy(kernel).copy()

    history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0)

    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(keras.ops.convert_to_numpy(kernel), kernel_before)
    for variable in model.weights:
        if variable.dtype.startswith("float"):
            assert variable.dtype == "float32", variable.path
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(variable))), variable.path
    assert model.get_layer("stage1_block1").compute_dtype == precision.removeprefix("mixed_")
    logits = forward(model, images)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


def test_xla_is_refused_on_torch_only():
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="TensorFlow and JAX"):
            resolve_jit_compile(True)
    else:
        assert resolve_jit_compile(True) is True
    assert resolve_jit_compile(False) is False


@pytest.mark.parametrize("gpu", [False, True])
def test_default_jit_setting_is_the_graph_for_tensorflow_on_a_cpu(monkeypatch, gpu):
    from hatnet_keras.training import precision

    monkeypatch.setattr(precision, "gpu_available", lambda: gpu)
    expected = False if BACKEND == "tensorflow" and not gpu else "auto"
    assert resolve_jit_compile(None) == expected


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras' auto setting on TensorFlow")
def test_keras_auto_jit_leaves_xla_off_for_tensorflow_without_a_gpu():
    # The README's CPU advice relies on it: a plain model.compile() does not take XLA.
    if gpu_available():
        pytest.skip("a GPU is present: Keras' auto setting takes XLA there")
    model = build_classifier(reduced_architecture(), classes=3, image_size=SIZE)
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    assert model.jit_compile is False


def test_softmax_copy_gives_the_probabilities_of_the_logits():
    model = build_classifier(reduced_architecture(), classes=3, image_size=SIZE)
    probabilities_model = with_softmax(model)
    images, _ = _batch(2)
    logits = forward(model, images)
    probabilities = forward(probabilities_model, images)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert model.get_layer("predictions").activation is not keras.activations.softmax
    assert [layer.name for layer in probabilities_model.layers] == [layer.name for layer in model.layers]


def test_fine_tuning_loads_the_backbone_and_starts_a_new_head(reduced_checkpoint):
    pretrained = build_reduced(input_shape=(SIZE, SIZE, 3), weights=str(reduced_checkpoint))
    model = build_classifier(
        reduced_architecture(), classes=3, image_size=SIZE, weights=str(reduced_checkpoint)
    )
    assert model.output_shape == (None, 3) and model.layers[-1].name == "predictions"
    reference = {variable.path: variable for variable in pretrained.weights}
    backbone = [v for v in model.trainable_variables if not v.path.startswith("predictions/")]
    assert len(backbone) == len(pretrained.trainable_variables) - 2
    for variable in backbone:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(variable),
            keras.ops.convert_to_numpy(reference[variable.path]),
            err_msg=variable.path,
        )
    assert tuple(model.get_layer("predictions").kernel.shape) == (64, 3)


def test_gpu_available_asks_the_current_backend(monkeypatch):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: [kind] if kind == "GPU" else [])
    elif BACKEND == "jax":
        import jax

        monkeypatch.setattr(jax, "devices", lambda: [type("Device", (), {"platform": "gpu"})()])
    else:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_available() is True
    monkeypatch.undo()
    assert isinstance(gpu_available(), bool)
