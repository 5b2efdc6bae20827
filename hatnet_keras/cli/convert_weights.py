"""hatnet-convert-weights: turn an authors' PyTorch checkpoint into a Keras weights file."""

import argparse
import sys

from hatnet_keras.cli.architecture import add_architecture_arguments, architecture_from_args


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hatnet-convert-weights",
        description=(
            "Convert a HAT-Net PyTorch checkpoint (.pth) into a Keras .weights.h5 file "
            "that loads with e.g. hatnet_keras.HATNetSmall(weights=OUTPUT)."
        ),
    )
    add_architecture_arguments(
        parser.add_mutually_exclusive_group(required=True),
        config_help="JSON file of hatnet_keras.HATNet architecture arguments, "
        "for other configurations",
    )
    parser.add_argument("--checkpoint", required=True, help="the .pth file to read")
    parser.add_argument("--output", required=True, help="the .weights.h5 file to write")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.output.endswith(".weights.h5"):
        raise SystemExit("--output must end in .weights.h5 (the Keras weights format).")

    from hatnet_keras.model import HATNet
    from hatnet_keras.weights import CheckpointMismatchError, convert_state_dict, read_state_dict

    state_dict = read_state_dict(args.checkpoint)
    head = state_dict.get("classifier.1.weight")
    classes = int(head.shape[0]) if head is not None else 1000
    model = HATNet(
        **architecture_from_args(args),
        include_top=head is not None,
        classes=classes,
        input_shape=(None, None, 3),
        name=f"hatnet_{args.variant or 'custom'}",
    )
    try:
        report = convert_state_dict(model, state_dict)
    except CheckpointMismatchError as error:
        print(f"error: {args.checkpoint}: {error}", file=sys.stderr)
        return 1
    model.save_weights(args.output)
    print(f"{args.checkpoint}: {report.summary()}")
    print(f"wrote {args.output} ({model.count_params():,} parameters, {classes} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
