"""hatnet-convert-weights: turn an authors' PyTorch checkpoint into a Keras weights file."""

import argparse
import json
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hatnet-convert-weights",
        description=(
            "Convert a HAT-Net PyTorch checkpoint (.pth) into a Keras .weights.h5 file "
            "that loads with e.g. hatnet_keras.HATNetSmall(weights=OUTPUT)."
        ),
    )
    architecture = parser.add_mutually_exclusive_group(required=True)
    architecture.add_argument(
        "--variant", choices=["tiny", "small", "medium", "large"], help="official variant"
    )
    architecture.add_argument(
        "--config",
        help="JSON file of hatnet_keras.HATNet architecture arguments, for other configurations",
    )
    parser.add_argument("--checkpoint", required=True, help="the .pth file to read")
    parser.add_argument("--output", required=True, help="the .weights.h5 file to write")
    return parser


def _architecture(args):
    from hatnet_keras.model import ARCHITECTURE_ARGS, VARIANTS

    if args.variant:
        return VARIANTS[args.variant]
    with open(args.config) as file:
        config = json.load(file)
    if "ds_ratios" in config:  # the reference's name for pool_ratios
        config["pool_ratios"] = config.pop("ds_ratios")
    unknown = set(config) - set(ARCHITECTURE_ARGS) - {"num_classes", "classes"}
    if unknown:
        raise SystemExit(f"{args.config}: unknown architecture arguments {sorted(unknown)}")
    return {key: config[key] for key in ARCHITECTURE_ARGS}


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
        **_architecture(args),
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
