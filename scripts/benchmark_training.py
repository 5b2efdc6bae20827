"""Training throughput of HAT-Net on the current Keras backend, with synthetic data.

Builds a HAT-Net (Tiny by default) with the training recipe's compile settings
(AdamW with parameter groups, warm-up + cosine schedule, label-smoothed
cross-entropy on logits), runs a few untimed warm-up steps (the first one
compiles), then times training steps on one fixed random batch and prints steps
and images per second.

Examples:
    KERAS_BACKEND=tensorflow python scripts/benchmark_training.py --no-jit-compile
    KERAS_BACKEND=jax python scripts/benchmark_training.py --precision mixed_bfloat16
    KERAS_BACKEND=torch python scripts/benchmark_training.py --warmup-steps 3 --steps 5
"""

import argparse
import sys
import time

from hatnet_keras.training.precision import PRECISIONS


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps, the first compiles")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA on TensorFlow/JAX (default: Keras' choice)",
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import keras
    import numpy as np

    from hatnet_keras.model import VARIANTS
    from hatnet_keras.training import (
        TrainConfig,
        WarmupCosineDecay,
        build_classifier,
        compile_for_training,
        set_precision,
    )

    set_precision(args.precision)
    model = build_classifier(VARIANTS[args.variant], args.classes, image_size=args.image_size)
    config = TrainConfig(output="", architecture=VARIANTS[args.variant], jit_compile=args.jit_compile)
    total = args.warmup_steps + args.steps
    compile_for_training(model, config, WarmupCosineDecay(5e-4, total_steps=total, warmup_steps=1))

    rng = np.random.default_rng(0)
    size, batch = args.image_size, args.batch_size
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = np.eye(args.classes, dtype="float32")[rng.integers(0, args.classes, batch)]

    start = time.perf_counter()
    model.train_on_batch(images, labels)
    first = time.perf_counter() - start
    for _ in range(args.warmup_steps - 1):
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = model.train_on_batch(images, labels)  # returns host values: steps are synchronised
    seconds = time.perf_counter() - start

    print(
        f"HAT-Net-{args.variant.capitalize()} {size}x{size}, batch {batch}, "
        f"backend {keras.config.backend()}, precision {args.precision}, "
        f"jit_compile {model.jit_compile}"
    )
    print(f"first step (compilation included): {first:.1f} s")
    print(
        f"{args.steps} timed steps: {args.steps / seconds:.3f} steps/s, "
        f"{args.steps * batch / seconds:.2f} images/s ({seconds / args.steps:.2f} s/step), "
        f"last loss {float(np.ravel(loss)[0]):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
