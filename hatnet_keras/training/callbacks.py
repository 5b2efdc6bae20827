"""The files of a training run and the callbacks that write them."""

import csv
import dataclasses
import importlib.util
import os

import keras


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Where a training run keeps its files, below `root`.

    Example:
    >>> from hatnet_keras.training import RunLayout
    >>> RunLayout("runs/flowers").model
    'runs/flowers/model.keras'
    """

    root: str

    def _path(self, *parts):
        return os.path.join(self.root, *parts)

    @property
    def model(self):
        """The final model: raw RGB [0, 255] in, class probabilities out."""
        return self._path("model.keras")

    @property
    def class_names(self):
        """JSON list of the class names, in the model's output order."""
        return self._path("class_names.json")

    @property
    def config(self):
        """JSON record of the run's settings."""
        return self._path("train_config.json")

    @property
    def history(self):
        """Per-epoch losses, metrics and learning rate (CSV)."""
        return self._path("history.csv")

    @property
    def logs(self):
        """TensorBoard logs."""
        return self._path("logs")

    @property
    def best_weights(self):
        """Weights of the epoch with the best validation accuracy."""
        return self._path("checkpoints", "best.weights.h5")

    @property
    def last_weights(self):
        """Weights after the latest epoch."""
        return self._path("checkpoints", "last.weights.h5")

    @property
    def backup(self):
        """`BackupAndRestore` state (weights, optimizer, epoch); removed when a run ends."""
        return self._path("backup")

    def has_backup(self):
        """Whether an interrupted run left state to resume from."""
        return os.path.isdir(self.backup) and any(
            name.startswith("training_metadata.json") for name in os.listdir(self.backup)
        )


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs as `learning_rate`.

    Put it before the callbacks that write logs (CSV, TensorBoard).

    Example:

    ```python
    model.fit(ds, callbacks=[LearningRateLogger(), keras.callbacks.CSVLogger("h.csv")])
    ```
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


def best_logged(history_path, monitor="val_accuracy"):
    """The highest `monitor` value in a `CSVLogger` file, or None.

    Example:

    ```python
    best_logged("runs/flowers/history.csv")  # 0.8125
    ```
    """
    if not os.path.exists(history_path):
        return None
    with open(history_path, newline="") as file:
        values = [float(row[monitor]) for row in csv.DictReader(file) if row.get(monitor)]
    return max(values, default=None)


def training_callbacks(layout, *, validation=True, resuming=False):
    """Callbacks of a run: learning-rate logging, backup for resuming, checkpoints, CSV, TensorBoard.

    TensorBoard logs are written when the `tensorboard` package is installed.

    Args:
        layout: the run's `RunLayout`.
        validation: whether `fit` gets validation data (the best checkpoint
            is chosen by `val_accuracy`; without validation there is none).
        resuming: whether the run continues an interrupted one (the CSV
            history is appended to and the best checkpoint must beat the
            best accuracy logged so far); otherwise the history starts anew.

    Example:

    ```python
    layout = RunLayout("runs/flowers")
    model.fit(train_ds, validation_data=val_ds, epochs=30,
              callbacks=training_callbacks(layout))
    ```
    """
    os.makedirs(os.path.dirname(layout.last_weights), exist_ok=True)
    callbacks = [
        LearningRateLogger(),
        keras.callbacks.BackupAndRestore(layout.backup),
        keras.callbacks.ModelCheckpoint(layout.last_weights, save_weights_only=True),
    ]
    if validation:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                layout.best_weights,
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_logged(layout.history) if resuming else None,
            )
        )
    callbacks.append(keras.callbacks.CSVLogger(layout.history, append=resuming))
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(layout.logs))
    else:
        print("TensorBoard is not installed (pip install tensorboard): no TensorBoard logs.")
    return callbacks


def tensorboard_available():
    """Whether the `tensorboard` package, which Keras' TensorBoard callback writes with, is installed."""
    return importlib.util.find_spec("tensorboard") is not None
