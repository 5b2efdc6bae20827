"""The authors' released ImageNet-1K checkpoints: download once, convert once, cache."""

import os

import keras

RELEASE_URL = "https://github.com/yun-liu/HAT-Net/releases/download/v2.0"
CHECKPOINT_FILES = {
    "tiny": "HAT-Net_Tiny.pth",
    "small": "HAT-Net_Small.pth",
    "medium": "HAT-Net_Medium.pth",
    "large": "HAT-Net_Large.pth",
}
# SHA-256 of each release file, checked after download when known. The release
# page publishes none; fill them in as they are verified.
CHECKPOINT_SHA256 = {variant: None for variant in CHECKPOINT_FILES}

# Environment overrides, for mirrors, air-gapped caches and tests.
URL_ENV = "HATNET_KERAS_WEIGHTS_URL"
CACHE_ENV = "HATNET_KERAS_CACHE_DIR"


def cache_dir():
    """Folder holding downloaded checkpoints and their converted Keras weights."""
    return os.environ.get(CACHE_ENV) or os.path.join(keras.config.keras_home(), "models")


def imagenet_weights_path(variant, file_hash=None):
    """Path of the converted Keras weights of `variant`, downloading and converting once.

    The checkpoint comes from `$HATNET_KERAS_WEIGHTS_URL` (default: the authors'
    release v2.0), checked against `file_hash` (SHA-256) or the known release
    hash. The result is a full model's `.weights.h5` (head and preprocessing
    included), cached beside the checkpoint.

    Example:

    ```python
    imagenet_weights_path("tiny")  # '~/.keras/models/hatnet_tiny_imagenet.weights.h5'
    ```
    """
    if variant not in CHECKPOINT_FILES:
        raise ValueError(
            "weights='imagenet' exists for the official variants only "
            f"({', '.join(CHECKPOINT_FILES)}); this architecture is none of them."
        )
    folder = cache_dir()
    converted = os.path.join(folder, f"hatnet_{variant}_imagenet.weights.h5")
    if os.path.exists(converted):
        return converted
    # get_file falls back to /tmp when the folder is missing; make it exist.
    os.makedirs(folder, exist_ok=True)
    filename = CHECKPOINT_FILES[variant]
    base_url = os.environ.get(URL_ENV) or RELEASE_URL
    checkpoint = keras.utils.get_file(
        fname=filename,
        origin=f"{base_url.rstrip('/')}/{filename}",
        file_hash=file_hash or CHECKPOINT_SHA256[variant],
        hash_algorithm="sha256",
        cache_dir=folder,
        cache_subdir="",
    )
    from hatnet_keras.model import VARIANTS, HATNet
    from hatnet_keras.weights.convert import convert_state_dict, read_state_dict

    model = HATNet(**VARIANTS[variant], input_shape=(None, None, 3), name=f"hatnet_{variant}")
    convert_state_dict(model, read_state_dict(checkpoint))
    partial = converted + ".partial.weights.h5"
    model.save_weights(partial)
    os.replace(partial, converted)
    return converted
