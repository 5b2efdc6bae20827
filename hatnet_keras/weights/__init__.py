"""Loading weights into HAT-Net models: Keras files, PyTorch checkpoints, ImageNet release."""

from hatnet_keras.weights.convert import (
    CheckpointMismatchError,
    ConversionReport,
    convert_state_dict,
    keras_target,
    plan_conversion,
    read_state_dict,
)
from hatnet_keras.weights.hub import imagenet_weights_path

_TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def transfer_weights(source, target):
    """Copies every variable of `target` from the variable of `source` with the same path.

    Lets a full model's weights fill a model built without its head or
    preprocessing. Raises `CheckpointMismatchError` before copying anything
    when a variable is missing from `source` or differs in shape.
    """
    by_path = {variable.path: variable for variable in source.weights}
    missing, mismatched = [], []
    for variable in target.weights:
        origin = by_path.get(variable.path)
        if origin is None:
            missing.append(variable.path)
        elif tuple(origin.shape) != tuple(variable.shape):
            mismatched.append((variable.path, variable.path, origin.shape, variable.shape))
    if missing or mismatched:
        raise CheckpointMismatchError(missing, [], mismatched)
    for variable in target.weights:
        variable.assign(by_path[variable.path])


def load_weights(model, weights, variant=None):
    """Loads `weights` into a HAT-Net `model`.

    Args:
        model: a model built by `hatnet_keras.HATNet` or a variant function.
        weights: "imagenet", a PyTorch checkpoint path (`.pth`, `.pt`, `.bin`)
            or a Keras weights file (`.weights.h5`).
        variant: the official variant the model's architecture is, if any
            (needed for "imagenet").

    Returns:
        A `ConversionReport` for a PyTorch checkpoint, else None.
    """
    if weights == "imagenet":
        from hatnet_keras.model import VARIANTS, HATNet

        path = imagenet_weights_path(variant)
        full = HATNet(**VARIANTS[variant], input_shape=(None, None, 3))
        full.load_weights(path)
        transfer_weights(full, model)
        return None
    weights = str(weights)
    if weights.endswith(_TORCH_SUFFIXES):
        return convert_state_dict(model, read_state_dict(weights))
    if weights.endswith(".h5"):
        model.load_weights(weights)
        return None
    raise ValueError(
        f"weights must be None, 'imagenet', a .pth checkpoint or a .weights.h5 file; got {weights!r}."
    )


__all__ = [
    "CheckpointMismatchError",
    "ConversionReport",
    "convert_state_dict",
    "imagenet_weights_path",
    "keras_target",
    "load_weights",
    "plan_conversion",
    "read_state_dict",
    "transfer_weights",
]
