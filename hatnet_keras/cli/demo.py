"""hatnet-demo: train a small HAT-Net on generated images of shapes, offline, in minutes on a CPU.

Writes the synthetic shapes dataset (`hatnet_keras.data.write_synthetic_dataset`),
trains a HAT-Net with the package's training loop (`hatnet_keras.training.train`:
AdamW without decay on biases and norms, warm-up + cosine, label smoothing,
checkpoints, saved `.keras` model), reports the validation accuracy, then reloads
the saved model and classifies a few newly drawn images.

Examples:
    hatnet-demo                      # about 2-4 minutes on 2 CPU cores (TensorFlow)
    hatnet-demo --output runs/demo --epochs 20
    hatnet-demo --fast               # a smoke test: tiny data, one epoch
"""

import argparse
import os
import sys
import time

from hatnet_keras.cpu_memory import reuse_freed_memory

# A HAT-Net with the official variants' attention layout (G = 8, 7, 7, 1;
# r = 8, 4, 2, 1) but narrow and shallow, so it trains from scratch on a CPU.
DEMO_ARCHITECTURE = {
    "dims": (32, 64, 96, 128),
    "depths": (1, 1, 2, 1),
    "head_dim": 16,
    "expansions": (4, 4, 4, 4),
    "grid_sizes": (8, 7, 7, 1),
    "pool_ratios": (8, 4, 2, 1),
    "kernel_sizes": (3, 3, 3, 3),
}
FULL = {"images_per_class": 500, "image_size": 48, "epochs": 8, "batch_size": 32}
FAST = {"images_per_class": 8, "image_size": 48, "epochs": 1, "batch_size": 8}
NUM_CLASSES = 4
NEW_IMAGES_PER_CLASS = 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hatnet-demo",
        description="Train a small HAT-Net on a generated shapes dataset and classify new images.",
    )
    parser.add_argument("--output", default=os.path.join("runs", "demo"), help="default runs/demo")
    parser.add_argument("--epochs", type=int, help=f"default {FULL['epochs']} ({FAST['epochs']} with --fast)")
    parser.add_argument("--fast", action="store_true", help="tiny data and one epoch: checks it all runs")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run_demo(output, *, fast=False, epochs=None, seed=0, verbose="auto"):
    """Runs the demo; returns `{"val_accuracy", "train_seconds", "model_path", "predictions"}`.

    `predictions` lists `(image path, true class, predicted class, probabilities)`.

    Example:

    ```python
    summary = run_demo("runs/demo")
    summary["val_accuracy"]  # 0.97
    ```
    """
    import keras

    from hatnet_keras.data import AugmentConfig, write_synthetic_dataset
    from hatnet_keras.training import TrainConfig, train

    sizes = FAST if fast else FULL
    size = sizes["image_size"]
    data_dir = os.path.join(output, "data")
    print(
        f"Writing {NUM_CLASSES} classes x {sizes['images_per_class']} synthetic {size}px "
        f"images to {data_dir}"
    )
    class_names = write_synthetic_dataset(
        data_dir,
        num_classes=NUM_CLASSES,
        images_per_class=sizes["images_per_class"],
        image_size=size,
        seed=seed,
    )
    config = TrainConfig(
        output=output,  # the run's files (model.keras, history.csv, ...) beside data/
        architecture=DEMO_ARCHITECTURE,
        data_dir=data_dir,
        val_split=0.2,
        image_size=size,
        epochs=epochs or sizes["epochs"],
        batch_size=sizes["batch_size"],
        # A small dataset from scratch wants a larger step than 5e-4 x 32 / 512.
        learning_rate=1e-3,
        warmup_epochs=1,
        drop_path_rate=0.0,
        # Shapes are easy: crops and flips are enough, mixing labels only slows learning.
        augment=AugmentConfig(
            crop_scale=(0.5, 1.0),
            randaugment_magnitude=None,
            mixup_alpha=0.0,
            cutmix_alpha=0.0,
            erasing_prob=0.0,
        ),
        # XLA is slower than TensorFlow's own kernels for this model on CPU.
        jit_compile=False if keras.config.backend() != "jax" else None,
        seed=seed,
        verbose=verbose,
    )
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    val_accuracy = result.history.history["val_accuracy"][-1]
    print(
        f"validation accuracy {100 * val_accuracy:.1f}% (chance {100 / NUM_CLASSES:.0f}%), "
        f"{config.epochs} epochs in {seconds:.0f} s; model saved to {result.layout.model}"
    )

    new_dir = os.path.join(output, "new_images")
    write_synthetic_dataset(
        new_dir,
        num_classes=NUM_CLASSES,
        images_per_class=NEW_IMAGES_PER_CLASS,
        image_size=size,
        seed=seed + 1,
    )
    model = keras.saving.load_model(result.layout.model)
    predictions = classify_folder(model, new_dir, class_names, size)
    print(f"Predictions of the reloaded model on new images ({new_dir}):")
    for path, truth, predicted, probabilities in predictions:
        ranked = sorted(zip(class_names, probabilities), key=lambda item: -item[1])
        shown = ", ".join(f"{name} {100 * p:.1f}%" for name, p in ranked[:3])
        mark = "ok" if predicted == truth else "WRONG"
        print(f"  {os.path.relpath(path, new_dir):27s} -> {predicted:9s} [{mark}]  ({shown})")
    return {
        "val_accuracy": val_accuracy,
        "train_seconds": seconds,
        "model_path": result.layout.model,
        "predictions": predictions,
    }


def classify_folder(model, directory, class_names, image_size):
    """`(path, true class, predicted class, probabilities)` for each image of a class-per-folder tree.

    Example:

    ```python
    classify_folder(model, "new_images", ["circle", "cross"], 64)
    ```
    """
    import keras
    import numpy as np

    paths, truths = [], []
    for name in class_names:
        folder = os.path.join(directory, name)
        for file in sorted(os.listdir(folder)):
            paths.append(os.path.join(folder, file))
            truths.append(name)
    images = np.stack(
        [
            keras.utils.img_to_array(keras.utils.load_img(path, target_size=(image_size, image_size)))
            for path in paths
        ]
    )
    probabilities = model.predict(images, verbose=0)
    return [
        (path, truth, class_names[int(np.argmax(p))], [float(v) for v in p])
        for path, truth, p in zip(paths, truths, probabilities)
    ]


def main(argv=None):
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # before the first TensorFlow operation
    run_demo(args.output, fast=args.fast, epochs=args.epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
