"""hatnet-train: train or fine-tune a HAT-Net classifier with `model.fit`.

Examples:
    hatnet-train --data-dir data/shapes --val-split 0.2 --variant tiny \
        --image-size 64 --epochs 10 --batch-size 32 --output runs/shapes
    hatnet-train --dataset imagenette/320px-v2 --val-split validation \
        --variant tiny --weights imagenet --epochs 30 --output runs/imagenette
"""

import argparse
import sys

from hatnet_keras.cli.architecture import add_architecture_arguments, architecture_from_args
from hatnet_keras.cpu_memory import reuse_freed_memory
from hatnet_keras.training.precision import PRECISIONS


def _magnitude(text):
    if text.lower() in ("none", "off"):
        return None
    return float(text)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hatnet-train",
        description=(
            "Train a HAT-Net classifier from scratch or fine-tune pretrained weights. "
            "Defaults follow the authors' ImageNet recipe (AdamW, warm-up + cosine, "
            "label smoothing 0.1, stochastic depth 0.1, RandAugment, MixUp/CutMix, "
            "random erasing). The run directory receives model.keras (RGB [0, 255] in, "
            "class probabilities out), class_names.json, history.csv, logs/ "
            "(TensorBoard), checkpoints/{best,last}.weights.h5; run the same command "
            "again after an interruption to resume from its backup/."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        help="folder with one subfolder of images per class; with --dataset, the TFDS data directory",
    )
    data.add_argument("--dataset", help="TensorFlow Datasets name instead of a folder, e.g. tf_flowers")
    data.add_argument("--val-dir", help="folder dataset: a separate validation folder")
    data.add_argument(
        "--val-split",
        help="folder dataset: fraction of the images held out for validation (e.g. 0.2); "
        "TFDS: validation split name (e.g. validation, or train[90%%:])",
    )
    data.add_argument("--train-split", default="train", help="TFDS training split (default: train)")
    data.add_argument("--manual-dir", help="TFDS manual download directory (e.g. for imagenet2012)")
    data.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images")

    model = parser.add_argument_group("model")
    add_architecture_arguments(model.add_mutually_exclusive_group(required=True))
    model.add_argument(
        "--weights",
        help="fine-tune: 'imagenet', a .pth checkpoint or a .weights.h5 file for the backbone "
        "(the head is new); default: from scratch",
    )
    model.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth (default 0.1)")
    model.add_argument("--dropout", type=float, default=0.0, help="dropout before the head (default 0)")

    run = parser.add_argument_group("training")
    run.add_argument("--output", required=True, help="run directory")
    run.add_argument("--image-size", type=int, default=224)
    run.add_argument("--epochs", type=int, default=300)
    run.add_argument("--batch-size", type=int, default=128, help="global batch size (default 128)")
    run.add_argument("--steps-per-epoch", type=int, help="default: one pass over the data")
    run.add_argument("--lr", type=float, help="peak learning rate (default 5e-4 x batch / 512)")
    run.add_argument("--min-lr", type=float, default=1e-5, help="final learning rate (default 1e-5)")
    run.add_argument("--warmup-lr", type=float, default=1e-6, help="initial learning rate (default 1e-6)")
    run.add_argument("--warmup-epochs", type=float, default=5, help="default 5")
    run.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    run.add_argument("--clip-norm", type=float, help="global gradient-norm clipping (default off)")
    run.add_argument("--label-smoothing", type=float, default=0.1, help="default 0.1")
    run.add_argument("--seed", type=int, default=0)

    augment = parser.add_argument_group("augmentation")
    augment.add_argument(
        "--randaugment", type=_magnitude, default=9, help="RandAugment magnitude 0..10 or 'none' (default 9)"
    )
    augment.add_argument("--mixup", type=float, default=0.8, help="MixUp alpha, 0 off (default 0.8)")
    augment.add_argument("--cutmix", type=float, default=1.0, help="CutMix alpha, 0 off (default 1.0)")
    augment.add_argument("--erasing", type=float, default=0.25, help="random erasing probability (default 0.25)")

    speed = parser.add_argument_group("precision and devices")
    speed.add_argument("--precision", choices=PRECISIONS, default="float32")
    speed.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="XLA compilation on TensorFlow/JAX (default: off for TensorFlow on a CPU, where its "
        "graph trains faster; otherwise Keras' choice; not available on torch)",
    )
    speed.add_argument(
        "--distribute",
        action="store_true",
        help="data-parallel on all local devices (TensorFlow: MirroredStrategy; JAX: DataParallel)",
    )
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    return parser


def config_from_args(args):
    """The `TrainConfig` for parsed command-line arguments."""
    from hatnet_keras.data import AugmentConfig
    from hatnet_keras.training import TrainConfig

    if not (args.data_dir or args.dataset):
        raise SystemExit("error: give --data-dir (a folder of class subfolders) or --dataset (TFDS).")
    val_split = args.val_split
    if val_split is not None and not args.dataset:
        try:
            val_split = float(val_split)
        except ValueError:
            raise SystemExit(
                f"error: for a folder dataset --val-split is a fraction such as 0.2; got {val_split!r}."
            ) from None
    if args.dataset and args.val_dir:
        raise SystemExit("error: --val-dir is for folder datasets; with --dataset use --val-split NAME.")
    return TrainConfig(
        output=args.output,
        architecture=architecture_from_args(args),
        data_dir=args.data_dir,
        dataset=args.dataset,
        val_dir=args.val_dir,
        val_split=val_split,
        train_split=args.train_split,
        manual_dir=args.manual_dir,
        weights=args.weights,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.lr,
        warmup_epochs=args.warmup_epochs,
        warmup_learning_rate=args.warmup_lr,
        final_learning_rate=args.min_lr,
        weight_decay=args.weight_decay,
        clip_norm=args.clip_norm,
        label_smoothing=args.label_smoothing,
        drop_path_rate=args.drop_path,
        dropout_rate=args.dropout,
        augment=AugmentConfig(
            image_size=args.image_size,
            randaugment_magnitude=args.randaugment,
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            erasing_prob=args.erasing,
        ),
        precision=args.precision,
        jit_compile=args.jit_compile,
        distribute=args.distribute,
        seed=args.seed,
        skip_corrupt=args.skip_corrupt,
        verbose=2 if args.quiet else "auto",
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # before the first TensorFlow operation
    config = config_from_args(args)

    from hatnet_keras.training import train

    try:
        result = train(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    history = result.history.history
    summary = ", ".join(
        f"{name} {values[-1]:.4f}" for name, values in history.items() if name.startswith("val_")
    )
    print(f"saved {result.layout.model} ({len(result.class_names)} classes)")
    if summary:
        print(f"last epoch: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
