"""Training HAT-Net with `model.fit`: the recipe's optimiser, schedule, precision and runs.

Example:

```python
from hatnet_keras.training import TrainConfig, train
result = train(TrainConfig(output="runs/shapes", data_dir="data/shapes",
                           architecture=hatnet_keras.VARIANTS["tiny"],
                           val_split=0.2, image_size=64, epochs=10))
```
"""

from hatnet_keras.training.callbacks import LearningRateLogger, RunLayout, training_callbacks
from hatnet_keras.training.classifier import (
    build_classifier,
    classification_metrics,
    with_softmax,
)
from hatnet_keras.training.distribute import data_parallel, pad_batches, replica_count
from hatnet_keras.training.evaluation import evaluate_classifier
from hatnet_keras.training.optimizer import build_optimizer, no_decay_variables
from hatnet_keras.training.precision import (
    PRECISIONS,
    gpu_available,
    resolve_jit_compile,
    set_precision,
)
from hatnet_keras.training.schedule import WarmupCosineDecay, scaled_learning_rate
from hatnet_keras.training.trainer import (
    TrainConfig,
    TrainResult,
    compile_for_training,
    learning_rate_schedule,
    load_datasets,
    train,
)

__all__ = [
    "LearningRateLogger",
    "PRECISIONS",
    "RunLayout",
    "TrainConfig",
    "TrainResult",
    "WarmupCosineDecay",
    "build_classifier",
    "build_optimizer",
    "classification_metrics",
    "compile_for_training",
    "data_parallel",
    "evaluate_classifier",
    "gpu_available",
    "learning_rate_schedule",
    "load_datasets",
    "no_decay_variables",
    "pad_batches",
    "replica_count",
    "resolve_jit_compile",
    "scaled_learning_rate",
    "set_precision",
    "train",
    "training_callbacks",
    "with_softmax",
]
