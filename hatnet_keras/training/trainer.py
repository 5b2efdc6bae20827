"""One training run with `model.fit`: data, model, optimiser, callbacks, saved model."""

import dataclasses
import json
import os

import keras

from hatnet_keras.data import AugmentConfig, image_folder_dataset, tfds_dataset
from hatnet_keras.training.callbacks import RunLayout, training_callbacks
from hatnet_keras.training.classifier import (
    build_classifier,
    classification_metrics,
    with_softmax,
)
from hatnet_keras.training.distribute import data_parallel, pad_batches, replica_count
from hatnet_keras.training.optimizer import WEIGHT_DECAY, build_optimizer
from hatnet_keras.training.precision import resolve_jit_compile, set_precision
from hatnet_keras.training.schedule import WarmupCosineDecay, scaled_learning_rate


@dataclasses.dataclass
class TrainConfig:
    """Settings of a training run; the defaults are the HAT-Net ImageNet recipe.

    Data come either from a folder with one subfolder per class (`data_dir`,
    validation from `val_dir` or a held-out fraction `val_split`) or from
    TensorFlow Datasets (`dataset` name, `train_split`, validation split name
    `val_split`, `data_dir` as TFDS data directory, `manual_dir`).

    Attributes:
        output: run directory (see `RunLayout`).
        architecture: `hatnet_keras.HATNet` architecture arguments.
        data_dir, dataset, val_dir, val_split, train_split, manual_dir: data.
        weights: None (from scratch), "imagenet", or a `.pth` / `.weights.h5`
            file whose backbone is fine-tuned under a new head.
        image_size: training image side.
        epochs, batch_size: batch_size is the global batch.
        steps_per_epoch: None: one pass over the training data per epoch.
        learning_rate: peak rate; None: 5e-4 x batch_size / 512.
        warmup_epochs, warmup_learning_rate, final_learning_rate: schedule.
        weight_decay, clip_norm: AdamW decay; global gradient-norm clipping.
        label_smoothing: of the cross-entropy loss.
        drop_path_rate, dropout_rate: stochastic depth; dropout before the head.
        augment: training augmentation (`hatnet_keras.data.AugmentConfig`).
        precision: "float32", "mixed_float16" or "mixed_bfloat16".
        jit_compile: None (off for TensorFlow on a CPU, else Keras' choice; see
            `resolve_jit_compile`), True (XLA) or False.
        distribute: data-parallel on all local devices (TensorFlow, JAX).
        seed: seed of initialisation, data order and augmentation.
        skip_corrupt: skip unreadable images of a folder dataset.
        verbose: `model.fit` verbosity.

    Example:
    >>> import hatnet_keras
    >>> from hatnet_keras.training import TrainConfig
    >>> config = TrainConfig(output="runs/shapes", architecture=hatnet_keras.VARIANTS["tiny"],
    ...                      data_dir="data/shapes", val_split=0.2, image_size=64, epochs=10)
    >>> config.batch_size, config.precision, config.augment.randaugment_magnitude
    (128, 'float32', 9)
    """

    output: str
    architecture: dict
    data_dir: str | None = None
    dataset: str | None = None
    val_dir: str | None = None
    val_split: float | str | None = None
    train_split: str = "train"
    manual_dir: str | None = None
    weights: str | None = None
    image_size: int = 224
    epochs: int = 300
    batch_size: int = 128
    steps_per_epoch: int | None = None
    learning_rate: float | None = None
    warmup_epochs: float = 5
    warmup_learning_rate: float = 1e-6
    final_learning_rate: float = 1e-5
    weight_decay: float = WEIGHT_DECAY
    clip_norm: float | None = None
    label_smoothing: float = 0.1
    drop_path_rate: float = 0.1
    dropout_rate: float = 0.0
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    precision: str = "float32"
    jit_compile: bool | None = None
    distribute: bool = False
    seed: int = 0
    skip_corrupt: bool = False
    verbose: str | int = "auto"


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the saved probability model, the fit history and the run's files."""

    model: keras.Model
    history: keras.callbacks.History
    class_names: list
    layout: RunLayout


def load_datasets(config):
    """`(train_ds, val_ds or None, class_names)` for a `TrainConfig`.

    Example:

    ```python
    train_ds, val_ds, classes = load_datasets(config)
    ```
    """
    common = dict(
        image_size=config.image_size,
        batch_size=config.batch_size,
        augment=config.augment,
        seed=config.seed,
    )
    if config.dataset:
        tfds_args = dict(common, data_dir=config.data_dir, manual_dir=config.manual_dir)
        train_ds, class_names = tfds_dataset(
            config.dataset, config.train_split, training=True, **tfds_args
        )
        val_ds = None
        if config.val_split:
            val_ds, _ = tfds_dataset(
                config.dataset, str(config.val_split), training=False, **tfds_args
            )
        return train_ds, val_ds, class_names
    if not config.data_dir:
        raise ValueError("Give a folder of class subfolders (data_dir) or a TFDS dataset name.")
    if config.val_dir and config.val_split:
        raise ValueError("Give either val_dir or val_split for a folder dataset, not both.")
    folder_args = dict(common, skip_corrupt=config.skip_corrupt)
    split = float(config.val_split) if config.val_split else None
    subset = dict(validation_split=split, subset="training") if split else {}
    train_ds, class_names = image_folder_dataset(
        config.data_dir, training=True, **folder_args, **subset
    )
    val_ds = None
    if split:
        val_ds, _ = image_folder_dataset(
            config.data_dir,
            training=False,
            class_names=class_names,
            validation_split=split,
            subset="validation",
            **folder_args,
        )
    elif config.val_dir:
        val_ds, _ = image_folder_dataset(
            config.val_dir, training=False, class_names=class_names, **folder_args
        )
    return train_ds, val_ds, class_names


def count_batches(dataset):
    """Number of batches in one pass over a finite `tf.data` dataset.

    Example:
    >>> import tensorflow as tf
    >>> from hatnet_keras.training.trainer import count_batches
    >>> count_batches(tf.data.Dataset.range(10).batch(4))
    3
    """
    import tensorflow as tf

    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The training dataset repeats forever: give steps_per_epoch.")
    if cardinality == tf.data.UNKNOWN_CARDINALITY:
        cardinality = int(dataset.reduce(0, lambda count, _: count + 1))
    if cardinality < 1:
        raise ValueError("The training dataset has no full batch: lower the batch size.")
    return cardinality


def learning_rate_schedule(config, steps_per_epoch):
    """The run's `WarmupCosineDecay` over `config.epochs` epochs of `steps_per_epoch` steps.

    Example:
    >>> from hatnet_keras.training import TrainConfig, learning_rate_schedule
    >>> schedule = learning_rate_schedule(TrainConfig("run", {}, batch_size=1024), 100)
    >>> schedule.peak_learning_rate, schedule.warmup_steps
    (0.001, 500)
    """
    total_steps = config.epochs * steps_per_epoch
    return WarmupCosineDecay(
        peak_learning_rate=config.learning_rate or scaled_learning_rate(config.batch_size),
        total_steps=total_steps,
        warmup_steps=min(round(config.warmup_epochs * steps_per_epoch), total_steps),
        warmup_learning_rate=config.warmup_learning_rate,
        final_learning_rate=config.final_learning_rate,
    )


def compile_for_training(model, config, schedule):
    """Compiles `model` (logits out) with the recipe's AdamW, loss and metrics.

    Example:

    ```python
    compile_for_training(model, config, schedule)
    ```
    """
    model.compile(
        optimizer=build_optimizer(
            model,
            schedule,
            weight_decay=config.weight_decay,
            global_clipnorm=config.clip_norm,
        ),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True,
            label_smoothing=config.label_smoothing,
            # Zero-weight padding rows (see distribute.pad_batches) do not dilute the mean.
            reduction="mean_with_sample_weight",
        ),
        # Weighted, so zero-weight padding rows count in no accuracy.
        weighted_metrics=classification_metrics(model.output_shape[-1]),
        jit_compile=resolve_jit_compile(config.jit_compile),
    )


def train(config):
    """Trains a HAT-Net classifier with `model.fit` and saves it to `config.output`.

    The run directory receives `model.keras` (raw RGB [0, 255] in, class
    probabilities out; trained as logits with a `from_logits` loss, the
    softmax is added for saving), `class_names.json`, `train_config.json`,
    `history.csv`, TensorBoard `logs/` and `checkpoints/{best,last}.weights.h5`
    (loadable into `model.keras`). While training, `backup/` holds the
    latest epoch's weights and optimizer state: running the same config
    again after a crash resumes from there. The global dtype policy is
    restored afterwards.

    With `distribute` on JAX, every batch must split evenly over the devices:
    the batch size must be a multiple of the device count, and the last
    validation batch is padded with zero-weight rows (accuracy stays exact;
    `val_loss` weighs that batch as a full one).

    Returns:
        A `TrainResult`.

    Example:

    ```python
    result = train(TrainConfig(output="runs/shapes", data_dir="data/shapes",
                               architecture=hatnet_keras.VARIANTS["tiny"],
                               val_split=0.2, image_size=64, epochs=10,
                               batch_size=32))
    result.history.history["val_accuracy"][-1]
    ```
    """
    # Refuse what the backend cannot do (XLA, devices on torch) before loading data.
    resolve_jit_compile(config.jit_compile)
    replicas = replica_count(config.distribute)
    layout = RunLayout(config.output)
    os.makedirs(layout.root, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    # Before the precision policy: the pipelines' Keras preprocessing layers stay float32.
    train_ds, val_ds, class_names = load_datasets(config)
    previous_policy = keras.config.dtype_policy()
    set_precision(config.precision)
    try:
        if config.batch_size % replicas:
            raise ValueError(
                f"The batch size ({config.batch_size}) must be a multiple of the number of "
                f"devices ({replicas}) to train on all of them."
            )
        if val_ds is not None and replicas > 1 and keras.config.backend() == "jax":
            val_ds = pad_batches(val_ds, replicas)
        if config.steps_per_epoch:
            train_ds = train_ds.repeat()
        steps_per_epoch = config.steps_per_epoch or count_batches(train_ds)
        schedule = learning_rate_schedule(config, steps_per_epoch)
        _write_json(layout.config, dataclasses.asdict(config))
        _write_json(layout.class_names, class_names)
        resuming = layout.has_backup()
        if resuming:
            print(f"Resuming the interrupted run from {layout.backup}")
        with data_parallel(config.distribute):
            model = build_classifier(
                config.architecture,
                len(class_names),
                image_size=config.image_size,
                weights=config.weights,
                drop_path_rate=config.drop_path_rate,
                dropout_rate=config.dropout_rate,
            )
            compile_for_training(model, config, schedule)
            history = model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=config.epochs,
                steps_per_epoch=config.steps_per_epoch,
                callbacks=training_callbacks(
                    layout, validation=val_ds is not None, resuming=resuming
                ),
                verbose=config.verbose,
                shuffle=False,  # the training dataset shuffles itself
            )
        final = with_softmax(model)
        final.save(layout.model)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return TrainResult(final, history, class_names, layout)


def _write_json(path, value):
    with open(path, "w") as file:
        json.dump(value, file, indent=1)
        file.write("\n")
