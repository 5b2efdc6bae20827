"""HAT-Net models in the `keras.applications` style: one config table, one builder."""

import numpy as np
import keras

from hatnet_keras.layers import Downsample, HATBlock, Stem

MIN_INPUT_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_COMMON = {
    "head_dim": 64,
    "expansions": (8, 8, 4, 4),
    "grid_sizes": (8, 7, 7, 1),
    "pool_ratios": (8, 4, 2, 1),
}
VARIANTS = {
    "tiny": {
        **_COMMON,
        "dims": (48, 96, 240, 384),
        "depths": (2, 2, 6, 3),
        "head_dim": 48,
        "kernel_sizes": (3, 3, 3, 3),
    },
    "small": {
        **_COMMON,
        "dims": (64, 128, 320, 512),
        "depths": (2, 3, 8, 3),
        "kernel_sizes": (3, 3, 3, 3),
    },
    "medium": {
        **_COMMON,
        "dims": (64, 128, 320, 512),
        "depths": (3, 6, 18, 3),
        "kernel_sizes": (5, 3, 5, 3),
    },
    "large": {
        **_COMMON,
        "dims": (64, 128, 320, 640),
        "depths": (3, 8, 27, 3),
        "kernel_sizes": (3, 3, 3, 3),
    },
}
ARCHITECTURE_ARGS = (
    "dims",
    "depths",
    "head_dim",
    "expansions",
    "grid_sizes",
    "pool_ratios",
    "kernel_sizes",
)
PYRAMID_LEVELS = ("P2", "P3", "P4", "P5")


def block_name(stage, index):
    """Name of block `index` (0-based) of stage `stage` (0-based): `stage1_block1` is the first."""
    return f"stage{stage + 1}_block{index + 1}"


def downsample_name(stage):
    """Name of the downsampling layer in front of stage `stage` (0-based, 1..3)."""
    return f"downsample{stage + 1}"


def find_variant(architecture):
    """Name of the official variant with these architecture arguments, or None."""
    normalised = {key: _as_tuple(architecture[key]) for key in ARCHITECTURE_ARGS}
    for variant, config in VARIANTS.items():
        if all(normalised[key] == _as_tuple(config[key]) for key in ARCHITECTURE_ARGS):
            return variant
    return None


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _resolve_input_shape(input_shape, input_tensor, include_top):
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape[1:])
    if input_shape is None:
        input_shape = (224, 224, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "input_shape must be (height, width, 3), channels last; "
            f"got {input_shape}."
        )
    height, width, channels = input_shape
    if channels != 3:
        raise ValueError(
            f"HAT-Net takes RGB images with 3 channels; got input_shape={input_shape}. "
            "Use (height, width, 3)."
        )
    for side in (height, width):
        if side is not None and side < MIN_INPUT_SIZE:
            raise ValueError(
                f"Input size {height}x{width} is too small: HAT-Net takes any height "
                f"and width of at least {MIN_INPUT_SIZE} pixels (or None); "
                f"got input_shape={input_shape}."
            )
    return input_shape


def _validate_arguments(dims, depths, head_dim, expansions, grid_sizes, pool_ratios, kernel_sizes):
    per_stage = {
        "dims": dims,
        "depths": depths,
        "expansions": expansions,
        "grid_sizes": grid_sizes,
        "pool_ratios": pool_ratios,
        "kernel_sizes": kernel_sizes,
    }
    for key, value in per_stage.items():
        if len(value) != 4:
            raise ValueError(f"{key} needs one value per stage (4); got {value}.")
    for dim in dims:
        if dim % head_dim:
            raise ValueError(f"Every dim must be a multiple of head_dim={head_dim}; got dims={dims}.")


def HATNet(
    dims,
    depths,
    head_dim,
    expansions,
    grid_sizes,
    pool_ratios,
    kernel_sizes,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    dropout_rate=0.2,
    name="hatnet",
):
    """Builds a HAT-Net with any architecture; `HATNetTiny()` and friends call this.

    Args:
        dims: channels of the four stages.
        depths: blocks per stage.
        head_dim: channels per attention head.
        expansions: conv-FFN expansion per stage.
        grid_sizes: window side G of H-MHSA's local step per stage (1: global attention).
        pool_ratios: pooling ratio r of H-MHSA's merge step per stage.
        kernel_sizes: conv-FFN depthwise kernel size per stage.
        include_top, weights, input_tensor, input_shape, pooling, classes,
        classifier_activation, include_preprocessing, drop_path_rate,
        dropout_rate, name: as for `HATNetTiny`.

    Returns:
        A functional `keras.Model`.

    Example:
    >>> import hatnet_keras
    >>> model = hatnet_keras.HATNet(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), head_dim=8,
    ...                             expansions=(2, 3, 2, 2), grid_sizes=(8, 7, 7, 1),
    ...                             pool_ratios=(8, 4, 2, 1), kernel_sizes=(5, 3, 5, 3),
    ...                             classes=10)
    >>> model.input_shape, model.output_shape
    ((None, 224, 224, 3), (None, 10))
    """
    _validate_arguments(dims, depths, head_dim, expansions, grid_sizes, pool_ratios, kernel_sizes)
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}.")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            "weights='imagenet' with include_top=True needs classes=1000; "
            f"got classes={classes}. Use include_top=False for another head."
        )
    input_shape = _resolve_input_shape(input_shape, input_tensor, include_top)

    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="images")
    elif keras.backend.is_keras_tensor(input_tensor):
        inputs = input_tensor
    else:
        inputs = keras.Input(tensor=input_tensor, shape=input_shape, name="images")

    x = inputs
    if include_preprocessing:
        x = keras.layers.Normalization(
            mean=[255.0 * m for m in IMAGENET_MEAN],
            variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
            dtype="float32",
            name="preprocessing",
        )(x)

    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    x = Stem(dims[0], min_size=MIN_INPUT_SIZE, name="stem")(x)
    for stage in range(4):
        if stage > 0:
            x = Downsample(dims[stage], name=downsample_name(stage))(x)
        for index in range(depths[stage]):
            x = HATBlock(
                head_dim=head_dim,
                grid_size=grid_sizes[stage],
                pool_ratio=pool_ratios[stage],
                expansion=expansions[stage],
                kernel_size=kernel_sizes[stage],
                drop_path_rate=rates.pop(0),
                name=block_name(stage, index),
            )(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
        x = keras.layers.Dense(
            classes, activation=classifier_activation, dtype="float32", name="predictions"
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    model_inputs = inputs
    if input_tensor is not None:
        sources = keras.utils.get_source_inputs(input_tensor)
        model_inputs = sources[0] if len(sources) == 1 else sources
    model = keras.Model(model_inputs, x, name=name)

    if weights is not None:
        from hatnet_keras.weights import load_weights

        architecture = {
            "dims": dims,
            "depths": depths,
            "head_dim": head_dim,
            "expansions": expansions,
            "grid_sizes": grid_sizes,
            "pool_ratios": pool_ratios,
            "kernel_sizes": kernel_sizes,
        }
        load_weights(model, weights, variant=find_variant(architecture))
    return model


def _variant_builder(variant, display_name):
    def builder(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        include_preprocessing=True,
        drop_path_rate=0.0,
        dropout_rate=0.2,
        name=f"hatnet_{variant}",
    ):
        return HATNet(
            **VARIANTS[variant],
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            drop_path_rate=drop_path_rate,
            dropout_rate=dropout_rate,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = display_name
    builder.__doc__ = _VARIANT_DOC.format(name=display_name, variant=variant)
    return builder


_VARIANT_DOC = """Instantiates HAT-Net-{variant} (Liu et al., "Vision Transformers with
Hierarchical Attention", MIR 2024).

The model takes RGB images with values in [0, 255] of any height and width
from 32 pixels up; with `include_preprocessing=True` (the default) the ImageNet
mean/std normalisation the released weights expect happens inside the model.

Args:
    include_top: whether to end in the classification head (global average
        pooling, dropout, dense).
    weights: None (random initialisation), "imagenet" (the authors' release
        v2.0 checkpoint, downloaded and converted once, then cached), or the
        path of a `.weights.h5` file or of a PyTorch `.pth` checkpoint.
    input_tensor: optional Keras tensor to use as the model's input.
    input_shape: `(height, width, 3)`; height and width may be None. Defaults
        to (224, 224, 3) with the head and (None, None, 3) without.
    pooling: with `include_top=False`: None (the 4D stride-32 map), "avg" or
        "max" (global pooling to a vector).
    classes: number of classes of the head.
    classifier_activation: activation of the head's output ("softmax", or
        None for logits). The head computes in float32 under any policy.
    include_preprocessing: normalise [0, 255] pixels inside the model.
    drop_path_rate: stochastic depth rate of the last block (linear from 0).
    dropout_rate: dropout before the head.
    name: the model's name.

Returns:
    A functional `keras.Model`.

Example:

```python
model = hatnet_keras.{name}(weights=None)
model.output_shape  # (None, 1000)
```
"""

HATNetTiny = _variant_builder("tiny", "HATNetTiny")
HATNetSmall = _variant_builder("small", "HATNetSmall")
HATNetMedium = _variant_builder("medium", "HATNetMedium")
HATNetLarge = _variant_builder("large", "HATNetLarge")


def pyramid_outputs(model):
    """The four stage outputs of a HAT-Net model, keyed `P2`..`P5` (strides 4..32).

    Works on any model built by this package (with or without the head).

    Example:
    >>> import keras
    >>> import hatnet_keras
    >>> backbone = hatnet_keras.HATNet(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), head_dim=8,
    ...                                expansions=(2, 3, 2, 2), grid_sizes=(8, 7, 7, 1),
    ...                                pool_ratios=(8, 4, 2, 1), kernel_sizes=(5, 3, 5, 3),
    ...                                include_top=False, input_shape=(224, 224, 3))
    >>> features = keras.Model(backbone.input, hatnet_keras.pyramid_outputs(backbone))
    >>> {k: v.shape for k, v in features.output.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'P2': (None, 56, 56, 16), 'P3': (None, 28, 28, 32),
     'P4': (None, 14, 14, 48), 'P5': (None, 7, 7, 64)}
    """
    outputs = {}
    for stage, level in enumerate(PYRAMID_LEVELS):
        prefix = f"stage{stage + 1}_block"
        blocks = [layer for layer in model.layers if layer.name.startswith(prefix)]
        if not blocks:
            raise ValueError(
                f"Model {model.name!r} has no layer named {prefix}*: "
                "pyramid_outputs needs a model built by hatnet_keras."
            )
        outputs[level] = blocks[-1].output
    return outputs


def pyramid_model(model, name=None):
    """A model sharing `model`'s weights that returns `{"P2": ..., "P5": ...}`.

    P2..P5 are the outputs of the last block of stages 1..4, at strides 4, 8,
    16 and 32, for detection or segmentation heads.

    Example:
    >>> import hatnet_keras
    >>> model = hatnet_keras.HATNet(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), head_dim=8,
    ...                             expansions=(2, 3, 2, 2), grid_sizes=(8, 7, 7, 1),
    ...                             pool_ratios=(8, 4, 2, 1), kernel_sizes=(5, 3, 5, 3))
    >>> features = hatnet_keras.pyramid_model(model)
    >>> sorted(features.output.keys()), features.output["P5"].shape
    (['P2', 'P3', 'P4', 'P5'], (None, 7, 7, 64))
    """
    return keras.Model(
        model.input, pyramid_outputs(model), name=name or f"{model.name}_pyramid"
    )
