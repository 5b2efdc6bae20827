"""hatnet-train and hatnet-evaluate end to end: a crashed run resumes, then is evaluated."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import keras

from hatnet_keras.cli import evaluate as evaluate_cli
from hatnet_keras.cli import train as train_cli
from hatnet_keras.data import write_synthetic_dataset
from hatnet_keras.training import WarmupCosineDecay
from conftest import forward, reduced_architecture

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.config.backend()
SIZE = 48
CRASH_EXIT_CODE = 17

# Runs hatnet-train with one extra callback that kills the process, without any
# cleanup, as soon as the first epoch has ended (after the backup was written).
CRASHING_TRAIN = textwrap.dedent(
    f"""
    import os, sys
    import keras
    from hatnet_keras.cli.train import main
    from hatnet_keras.training import trainer

    class HardCrash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            os._exit({CRASH_EXIT_CODE})

    original = trainer.training_callbacks
    trainer.training_callbacks = lambda *args, **kwargs: original(*args, **kwargs) + [HardCrash()]
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """18 images of 3 classes; --val-split 0.25 holds out 4 (one batch), leaving 3 batches of 4."""
    directory = tmp_path_factory.mktemp("shapes")
    write_synthetic_dataset(directory, num_classes=3, images_per_class=6, image_size=SIZE)
    return directory


def _train_args(data_dir, config_path, run_dir):
    args = [
        "--data-dir", str(data_dir), "--val-split", "0.25", "--config", str(config_path),
        "--image-size", str(SIZE), "--epochs", "2", "--batch-size", "4",
        "--lr", "1e-3", "--warmup-epochs", "1",
        "--randaugment", "none", "--mixup", "0", "--cutmix", "0", "--erasing", "0",
        "--precision", "mixed_bfloat16", "--output", str(run_dir), "--quiet",
    ]  # fmt: skip
    if BACKEND != "jax":  # TensorFlow compiles faster without XLA on CPU; torch has none
        args.append("--no-jit-compile")
    return args


def _run(script_args, cwd, jax_cache):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, OMP_NUM_THREADS="1")
    # The resumed run finds the crashed run's XLA programs in JAX's persistent cache.
    env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.run(
        [sys.executable, *script_args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_cli_defaults_are_the_recipe(tmp_path):
    args = train_cli.build_parser().parse_args(
        ["--data-dir", "d", "--variant", "tiny", "--output", str(tmp_path)]
    )
    config = train_cli.config_from_args(args)
    assert config.learning_rate is None  # 5e-4 x batch / 512
    assert (config.warmup_epochs, config.warmup_learning_rate, config.final_learning_rate) == (5, 1e-6, 1e-5)
    assert (config.weight_decay, config.label_smoothing, config.drop_path_rate) == (0.05, 0.1, 0.1)
    assert config.clip_norm is None and config.precision == "float32"
    augment = config.augment
    assert (augment.randaugment_magnitude, augment.mixup_alpha, augment.cutmix_alpha) == (9, 0.8, 1.0)
    assert (augment.erasing_prob, augment.image_size) == (0.25, 224)
    with pytest.raises(SystemExit, match="fraction"):
        train_cli.config_from_args(
            train_cli.build_parser().parse_args(
                ["--data-dir", "d", "--variant", "tiny", "--val-split", "validation", "--output", "r"]
            )
        )


def test_crashed_run_resumes_from_its_backup_then_evaluates(shapes, tmp_path):
    """A bfloat16 run killed after epoch 1 of 2 finishes epoch 2 only, with the optimizer's state."""
    config_path = tmp_path / "reduced.json"
    config_path.write_text(json.dumps(reduced_architecture()))
    run_dir = tmp_path / "run"
    args = _train_args(shapes, config_path, run_dir)
    crashing = tmp_path / "crashing_train.py"
    crashing.write_text(CRASHING_TRAIN)

    crashed = _run([str(crashing), *args], cwd=ROOT, jax_cache=tmp_path / "jax_cache")
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stdout + crashed.stderr
    assert not (run_dir / "model.keras").exists()
    assert (run_dir / "backup").is_dir()
    assert [row["epoch"] for row in _history(run_dir)] == ["0"]

    resumed = _run([str(ROOT / "scripts" / "train.py"), *args], cwd=ROOT, jax_cache=tmp_path / "jax_cache")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming" in resumed.stdout
    assert "Epoch 2/2" in resumed.stdout and "Epoch 1/2" not in resumed.stdout

    history = _history(run_dir)
    assert [row["epoch"] for row in history] == ["0", "1"]
    # 3 steps per epoch, 1 warm-up epoch: the peak after epoch 1 and the final rate
    # after epoch 2 only if the optimizer's step count was restored from the backup.
    schedule = WarmupCosineDecay(1e-3, total_steps=6, warmup_steps=3)
    assert float(history[0]["learning_rate"]) == pytest.approx(float(schedule(3)), rel=1e-5)
    assert float(history[1]["learning_rate"]) == pytest.approx(float(schedule(6)), rel=1e-5)
    assert not (run_dir / "backup").exists()
    for name in ("model.keras", "class_names.json", "train_config.json",
                 "checkpoints/best.weights.h5", "checkpoints/last.weights.h5"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("*tfevents*")), "TensorBoard logs"
    class_names = json.loads((run_dir / "class_names.json").read_text())
    assert class_names == ["circle", "square", "triangle"]

    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.get_layer("stage1_block1").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("predictions").dtype_policy.name == "float32"
    pixels = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    probabilities = forward(model, pixels)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    results_path = tmp_path / "results.json"
    code = evaluate_cli.main(
        [str(run_dir / "model.keras"), "--data-dir", str(shapes), "--val-split", "0.25",
         "--batch-size", "4", "--json", str(results_path)]
    )  # fmt: skip
    assert code == 0
    results = json.loads(results_path.read_text())
    assert results["images"] == 4 and results["image_size"] == SIZE
    # The same images, transform and weights as the last epoch's validation.
    assert results["accuracy"] == pytest.approx(float(history[-1]["val_accuracy"]), abs=1e-6)

    # The architecture and a checkpoint instead: its 3-class head is read from the file.
    code = evaluate_cli.main(
        ["--config", str(config_path), "--weights", str(run_dir / "checkpoints/best.weights.h5"),
         "--data-dir", str(shapes), "--val-split", "0.25", "--image-size", str(SIZE),
         "--batch-size", "4", "--json", str(results_path)]
    )  # fmt: skip
    assert code == 0
    assert json.loads(results_path.read_text())["images"] == 4
    assert evaluate_cli.head_classes(str(run_dir / "checkpoints/best.weights.h5")) == 3
