"""Data-parallel training on two virtual CPU devices matches training on one.

The device setup must happen before TensorFlow or JAX initialises, so each check
runs in a fresh Python process.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import keras

from hatnet_keras.cli import train as train_cli
from hatnet_keras.training import data_parallel, pad_batches
from conftest import reduced_architecture

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.config.backend()

# Trains the same initial weights on the same fixed batch for three steps with
# plain SGD (so a gradient of the wrong scale would show), first on one device,
# then data-parallel over two, then evaluates both on 7 images; prints the
# per-step losses and the accuracy, and saves the final weights.
COMPARE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np

    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    import keras
    import tensorflow as tf
    from hatnet_keras.training import build_classifier, data_parallel, pad_batches

    keras.utils.set_random_seed(0)  # the same initial weights, and losses, every run

    architecture, output = json.loads(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 48, 48, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[[0, 1, 2, 0, 1, 2, 0, 1]]
    # 7 validation images in batches of 4: the last batch, 3, does not split over 2 devices.
    validation = tf.data.Dataset.from_tensor_slices((images[1:], labels[::-1][1:])).batch(4)

    def train(distributed, weights=None):
        with data_parallel(distributed) as context:
            model = build_classifier(
                architecture, 3, image_size=48, drop_path_rate=0.0, dropout_rate=0.0
            )
            if weights is not None:
                model.set_weights(weights)
            initial = model.get_weights()
            model.compile(
                optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                # Eager JAX is slow; TensorFlow traces faster without XLA on CPU.
                jit_compile=os.environ["KERAS_BACKEND"] == "jax",
            )
            if os.environ["KERAS_BACKEND"] == "tensorflow":
                replicas = context.num_replicas_in_sync if context else 1
            else:
                replicas = len(context.device_mesh.devices.flatten()) if context else 1
            # One step per epoch on the same batch: each epoch's loss is one step's.
            history = model.fit(images, labels, batch_size=8, epochs=3, shuffle=False, verbose=0)
            if replicas > 1 and os.environ["KERAS_BACKEND"] == "jax":
                validation_data = pad_batches(validation, replicas)  # as hatnet-train does
            else:
                validation_data = validation
            accuracy = model.evaluate(validation_data, verbose=0, return_dict=True)["accuracy"]
        return initial, history.history["loss"] + [accuracy], model.get_weights(), replicas

    initial, single_losses, single_weights, _ = train(False)
    _, multi_losses, multi_weights, replicas = train(True, initial)
    np.savez(output, *single_weights, *[w for w in multi_weights])
    print(json.dumps({"replicas": replicas, "single": single_losses, "multi": multi_losses}))
    sys.stderr.write(f"losses: single {single_losses}, multi {multi_losses}\\n")
    """
)


def _compare_in_subprocess(tmp_path, extra_env):
    script = tmp_path / "compare.py"
    script.write_text(COMPARE)
    weights_path = tmp_path / "weights.npz"
    env = dict(os.environ, KERAS_BACKEND=BACKEND, OMP_NUM_THREADS="1", **extra_env)
    result = subprocess.run(
        [sys.executable, str(script), json.dumps(reduced_architecture()), str(weights_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    with np.load(weights_path) as archive:
        arrays = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    half = len(arrays) // 2
    return report, arrays[:half], arrays[half:]


def _assert_same_training(report, single_weights, multi_weights):
    assert report["replicas"] == 2
    assert len(report["single"]) == 4
    # Step 1 uses the shared initial weights; steps 2 and 3 depend on the updates.
    np.testing.assert_allclose(report["multi"][:3], report["single"][:3], rtol=1e-4)
    # It trained. Plain SGD on one batch can swing back to about the first loss at
    # step 3, so either later step may differ.
    first = report["single"][0]
    assert any(loss != pytest.approx(first, rel=1e-3) for loss in report["single"][1:3])
    # Accuracy over 7 images, so padding rows counted as images would show.
    assert report["multi"][3] == pytest.approx(report["single"][3], abs=1e-6)
    for single, multi in zip(single_weights, multi_weights):
        np.testing.assert_allclose(multi, single, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="MirroredStrategy is TensorFlow's")
def test_mirrored_strategy_on_two_cpus_matches_one_device(tmp_path):
    _assert_same_training(*_compare_in_subprocess(tmp_path, {}))


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution.DataParallel runs on JAX")
def test_jax_data_parallel_on_two_cpus_matches_one_device(tmp_path):
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    _assert_same_training(*_compare_in_subprocess(tmp_path, {"XLA_FLAGS": flags}))


@pytest.mark.skipif(BACKEND != "torch", reason="the torch backend is the one without support")
def test_torch_refuses_distribution_clearly(tmp_path):
    with pytest.raises(ValueError, match="torchrun"):
        with data_parallel(True):
            pass
    # hatnet-train says so before reading any data.
    assert train_cli.main(
        ["--data-dir", str(tmp_path / "missing"), "--variant", "tiny", "--distribute",
         "--output", str(tmp_path / "run")]
    ) == 1  # fmt: skip
    assert not (tmp_path / "run").exists()
    with data_parallel(False) as context:
        assert context is None


def test_padded_batches_split_evenly_and_weigh_nothing():
    import tensorflow as tf

    images = np.arange(7 * 2 * 2 * 3, dtype="float32").reshape(7, 2, 2, 3)
    labels = np.eye(3, dtype="float32")[np.arange(7) % 3]
    batches = list(
        pad_batches(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), 2)
        .as_numpy_iterator()
    )
    assert [len(batch[0]) for batch in batches] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[:7], images)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[:7], labels)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), [1] * 7 + [0])
    assert not batches[1][0][3].any() and not batches[1][1][3].any()
