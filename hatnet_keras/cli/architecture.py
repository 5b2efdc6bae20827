"""The `--variant` / `--config` arguments the command-line tools share.

`--variant` names an official variant; `--config` a JSON file of `hatnet_keras.HATNet`
architecture arguments, as written by the authors' configs or by hand:

    {"dims": [48, 96, 240, 384], "depths": [2, 2, 6, 3], "head_dim": 48,
     "expansions": [8, 8, 4, 4], "grid_sizes": [8, 7, 7, 1],
     "pool_ratios": [8, 4, 2, 1], "kernel_sizes": [3, 3, 3, 3]}

It may also hold the head's class count as `classes` (or the reference's `num_classes`),
and `ds_ratios`, the reference's name for `pool_ratios`.
"""

import json

# The keys of `hatnet_keras.model.VARIANTS`, written out so that building a parser
# (e.g. for --help) does not import Keras.
VARIANT_NAMES = ("tiny", "small", "medium", "large")


def add_architecture_arguments(group, config_help=None):
    """Adds `--variant` and `--config` to `group` (usually a mutually exclusive group).

    Example:
    >>> import argparse
    >>> from hatnet_keras.cli.architecture import add_architecture_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_architecture_arguments(parser.add_mutually_exclusive_group(required=True))
    >>> parser.parse_args(["--variant", "small"]).variant
    'small'
    """
    group.add_argument("--variant", choices=VARIANT_NAMES, help="an official variant")
    group.add_argument(
        "--config",
        help=config_help or "JSON file of hatnet_keras.HATNet architecture arguments",
    )


def read_architecture_config(path):
    """The architecture arguments and the class count (or None) in a JSON config file.

    Raises `SystemExit` naming the file and the arguments that are missing or unknown,
    so a command-line tool stops with a message rather than a traceback.

    Example:

    ```python
    architecture, classes = read_architecture_config("reduced.json")
    ```
    """
    from hatnet_keras.model import ARCHITECTURE_ARGS

    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {path}: cannot read an architecture config: {error}") from None
    if not isinstance(config, dict):
        raise SystemExit(f"error: {path}: an architecture config is a JSON object of arguments.")
    if "ds_ratios" in config:
        config["pool_ratios"] = config.pop("ds_ratios")
    classes = config.pop("classes", None)
    num_classes = config.pop("num_classes", None)
    classes = classes if classes is not None else num_classes
    unknown = sorted(set(config) - set(ARCHITECTURE_ARGS))
    missing = [key for key in ARCHITECTURE_ARGS if key not in config]
    if unknown or missing:
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if unknown:
            problems.append(f"unknown {unknown}")
        raise SystemExit(
            f"error: {path}: architecture arguments {' and '.join(problems)}; "
            f"a config holds exactly {list(ARCHITECTURE_ARGS)} (and optionally `classes`)."
        )
    return {key: config[key] for key in ARCHITECTURE_ARGS}, classes


def architecture_from_args(args):
    """The architecture arguments that parsed `--variant` or `--config` name.

    Example:
    >>> import argparse
    >>> from hatnet_keras.cli.architecture import architecture_from_args
    >>> architecture = architecture_from_args(argparse.Namespace(variant="tiny", config=None))
    >>> architecture["dims"], architecture["depths"]
    ((48, 96, 240, 384), (2, 2, 6, 3))
    """
    from hatnet_keras.model import VARIANTS

    if args.variant:
        return dict(VARIANTS[args.variant])
    architecture, _ = read_architecture_config(args.config)
    return architecture
