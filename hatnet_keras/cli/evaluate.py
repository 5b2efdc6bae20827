"""hatnet-evaluate: top-1 and top-5 accuracy of a HAT-Net classifier on a folder or TFDS split.

Examples:
    hatnet-evaluate runs/shapes/model.keras --data-dir data/shapes --val-split 0.2
    hatnet-evaluate --variant tiny --weights imagenet \
        --dataset imagenet2012 --split validation --manual-dir ~/imagenet --json top1.json
"""

import argparse
import json
import os
import sys

from hatnet_keras.cli.architecture import add_architecture_arguments, architecture_from_args
from hatnet_keras.cpu_memory import reuse_freed_memory


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hatnet-evaluate",
        description=(
            "Top-1 and top-5 accuracy of a saved .keras model, or of an architecture with "
            "weights, with the evaluation transform (short side resized to "
            "size / crop fraction, bicubic, centre crop)."
        ),
    )
    parser.add_argument("model", nargs="?", help="a saved .keras model (e.g. RUN_DIR/model.keras)")
    add_architecture_arguments(parser.add_mutually_exclusive_group())
    parser.add_argument(
        "--weights",
        help="with --variant/--config: 'imagenet', a .pth file or a full model's .weights.h5 "
        "(their class count is read); with a .keras model: weights to load into it, e.g. "
        "RUN_DIR/checkpoints/best.weights.h5",
    )
    parser.add_argument(
        "--data-dir",
        help="folder with one subfolder of images per class; with --dataset, the TFDS data directory",
    )
    parser.add_argument("--dataset", help="TensorFlow Datasets name instead of a folder")
    parser.add_argument("--split", default="validation", help="TFDS split (default: validation)")
    parser.add_argument("--manual-dir", help="TFDS manual download directory")
    parser.add_argument(
        "--val-split",
        type=float,
        help="folder: evaluate only the held-out fraction hatnet-train --val-split used",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that split (default 0)")
    parser.add_argument(
        "--class-names",
        help="JSON list of class names in the model's output order (folder datasets; "
        "default: class_names.json beside the model, else the sorted subfolders)",
    )
    parser.add_argument("--image-size", type=int, help="default: the model's input size, else 224")
    parser.add_argument("--crop-fraction", type=float, default=0.875, help="default 0.875")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser


def load_classifier(args):
    """The model to evaluate: a saved `.keras` file, or an architecture with weights."""
    import keras

    import hatnet_keras

    if args.model:
        if args.variant or args.config:
            raise SystemExit("error: give a .keras model or --variant/--config, not both.")
        model = keras.saving.load_model(args.model, compile=False)
        if args.weights:  # e.g. RUN_DIR/checkpoints/best.weights.h5
            model.load_weights(args.weights)
        return model
    if not (args.variant or args.config):
        raise SystemExit("error: give a .keras model, or --variant/--config (with --weights).")
    if not args.weights:
        raise SystemExit("error: --variant/--config needs --weights (imagenet, .pth or .weights.h5).")
    architecture = architecture_from_args(args)
    return hatnet_keras.HATNet(
        **architecture,
        weights=args.weights,
        classes=head_classes(args.weights),
        input_shape=(None, None, 3),
    )


def head_classes(weights):
    """Classes of the classifier head stored in `weights`; 1000 (ImageNet) where it has none.

    Reads a `.pth` checkpoint's `classifier.1.weight`, or the bias of the one
    top-level Dense layer (the `predictions` head) of a full HAT-Net's `.weights.h5`.

    Example:

    ```python
    head_classes("run/checkpoints/best.weights.h5")  # 3
    ```
    """
    if weights.endswith((".pth", ".pt", ".bin")):
        from hatnet_keras.weights import read_state_dict

        head = read_state_dict(weights).get("classifier.1.weight")
        return 1000 if head is None else int(head.shape[0])
    if weights.endswith(".weights.h5"):
        import h5py

        with h5py.File(weights, "r") as file:
            bias = file.get("layers/dense/vars/1")
            return 1000 if bias is None else int(bias.shape[0])
    return 1000


def _class_names(args):
    if args.class_names:
        path = args.class_names
    elif args.model and os.path.exists(os.path.join(os.path.dirname(args.model), "class_names.json")):
        path = os.path.join(os.path.dirname(args.model), "class_names.json")
    else:
        return None
    with open(path) as file:
        return json.load(file)


def load_dataset(args, image_size):
    """`(dataset, description)` of the evaluation data."""
    from hatnet_keras.data import AugmentConfig, image_folder_dataset, tfds_dataset

    common = dict(
        training=False,
        image_size=image_size,
        batch_size=args.batch_size,
        augment=AugmentConfig(eval_crop_fraction=args.crop_fraction),
    )
    if args.dataset:
        dataset, _ = tfds_dataset(
            args.dataset, args.split, data_dir=args.data_dir, manual_dir=args.manual_dir, **common
        )
        return dataset, f"{args.dataset} [{args.split}]"
    if not args.data_dir:
        raise SystemExit("error: give --data-dir (a folder of class subfolders) or --dataset (TFDS).")
    subset = {}
    description = args.data_dir
    if args.val_split:
        subset = dict(validation_split=args.val_split, subset="validation", seed=args.seed)
        description += f" (held-out {args.val_split:g} of it, seed {args.seed})"
    dataset, _ = image_folder_dataset(
        args.data_dir,
        class_names=_class_names(args),
        skip_corrupt=args.skip_corrupt,
        **common,
        **subset,
    )
    return dataset, description


def main(argv=None):
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # before the first TensorFlow operation
    from hatnet_keras.training import evaluate_classifier

    model = load_classifier(args)
    image_size = args.image_size or model.input_shape[1] or 224
    try:
        dataset, description = load_dataset(args, image_size)
        results = evaluate_classifier(model, dataset)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    source = args.model or f"{args.variant or args.config} with {args.weights}"
    classes = model.output_shape[-1]
    print(f"model:    {source} ({classes} classes)")
    print(f"data:     {description}, {results['images']} images at {image_size}x{image_size}")
    print(f"top-1:    {100 * results['accuracy']:.2f}%")
    if "top5_accuracy" in results:
        print(f"top-5:    {100 * results['top5_accuracy']:.2f}%")
    else:
        print(f"top-5:    n/a ({classes} classes)")
    if args.json:
        record = dict(results, model=source, data=description, image_size=image_size)
        with open(args.json, "w") as file:
            json.dump(record, file, indent=1)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
