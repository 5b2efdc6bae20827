"""hatnet-export: write a HAT-Net model as a TensorFlow SavedModel, ONNX or LiteRT file."""

import argparse
import os
import sys

from hatnet_keras.cli.architecture import add_architecture_arguments, read_architecture_config
from hatnet_keras.export.support import FORMATS, ExportNotSupportedError, check_supported

def build_parser():
    parser = argparse.ArgumentParser(
        prog="hatnet-export",
        description=(
            "Export a HAT-Net model for serving, in float32 whatever precision it was "
            "trained in. tf_saved_model has the signatures `serve` (float32 RGB pixels "
            "in [0, 255], (batch, height, width, 3)) and `serve_bytes` (a batch of "
            "JPEG/PNG files as strings). The format must be one the Keras backend "
            "(KERAS_BACKEND) can write: tensorflow writes all three."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a .keras model file saved by Keras")
    add_architecture_arguments(
        source,
        config_help="JSON file of hatnet_keras.HATNet architecture arguments (may hold `classes`)",
    )
    parser.add_argument(
        "--weights",
        help="with --variant/--config: 'imagenet', a .pth checkpoint or a .weights.h5 file",
    )
    parser.add_argument(
        "--classes", type=int, help="with --variant/--config: classes of the head (default 1000)"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="directory (tf_saved_model), .onnx file (onnx) or .tflite file (litert)",
    )
    parser.add_argument("--format", choices=FORMATS, default="tf_saved_model")
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="side serve_bytes resizes and centre-crops images to; also the fixed input "
        "size where the backend cannot export free sizes (default 224)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the converter's)")
    parser.add_argument(
        "--select-tf-ops",
        action="store_true",
        help="litert: allow TensorFlow ops without a LiteRT builtin (needs the Flex delegate)",
    )
    return parser


def load_model(args):
    """The model the arguments name: a .keras file, or a variant/config built with weights."""
    import keras

    import hatnet_keras  # registers the layers a .keras file refers to

    if args.model:
        if args.weights or args.classes:
            raise SystemExit("--weights and --classes go with --variant/--config, not --model.")
        return keras.saving.load_model(args.model, compile=False)
    if args.variant:
        architecture, classes = hatnet_keras.VARIANTS[args.variant], None
    else:
        architecture, classes = read_architecture_config(args.config)
    return hatnet_keras.HATNet(
        **architecture,
        weights=args.weights,
        classes=args.classes or classes or 1000,
        input_shape=(None, None, 3),
        name=f"hatnet_{args.variant or 'custom'}",
    )


def _size_on_disk(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _format_options(parser, args):
    """The exporter keyword arguments of the format-specific flags."""
    if args.opset is not None and args.format != "onnx":
        parser.error("--opset goes with --format onnx.")
    if args.select_tf_ops and args.format != "litert":
        parser.error("--select-tf-ops goes with --format litert.")
    if args.format == "onnx":
        return {"opset": args.opset}
    if args.format == "litert":
        return {"select_tf_ops": args.select_tf_ops}
    return {}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    options = _format_options(parser, args)
    try:
        check_supported(args.format)
    except ExportNotSupportedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from hatnet_keras.export import SERVE, SERVE_BYTES, export_model

    model = load_model(args)
    try:
        export_model(
            model, args.output, format=args.format, image_size=args.image_size, **options
        )
    except (ExportNotSupportedError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.output} ({args.format}, {_size_on_disk(args.output) / 2**20:.1f} MiB) "
        f"from {model.name} ({model.count_params():,} parameters)"
    )
    if args.format == "tf_saved_model":
        print(f"signatures: {SERVE} (float32 pixels), {SERVE_BYTES} (encoded images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
