"""Input pipelines (`tf.data` + Keras preprocessing layers) and a synthetic demo dataset.

The synthetic shapes are also a TensorFlow Datasets dataset, "hatnet_shapes",
prepared offline (`hatnet_keras.data.shapes_tfds`; `tfds_dataset` registers it).

Example:
    >>> import shutil, tempfile
    >>> from hatnet_keras.data import image_folder_dataset, write_synthetic_dataset
    >>> root = tempfile.mkdtemp()  # e.g. "/tmp/shapes"
    >>> classes = write_synthetic_dataset(root, images_per_class=10)
    >>> train_ds, classes = image_folder_dataset(
    ...     root, training=True, image_size=64, batch_size=16,
    ...     validation_split=0.2, subset="training")
    >>> val_ds, _ = image_folder_dataset(
    ...     root, training=False, image_size=64, batch_size=16,
    ...     validation_split=0.2, subset="validation", class_names=classes)
    >>> images, one_hot_labels = next(iter(val_ds))
    >>> tuple(images.shape), tuple(one_hot_labels.shape)
    ((8, 64, 64, 3), (8, 4))
    >>> shutil.rmtree(root)
"""

from hatnet_keras.data.folder import IMAGE_EXTENSIONS, find_unreadable_images
from hatnet_keras.data.pipelines import (
    AugmentConfig,
    holdout_splits,
    image_folder_dataset,
    tfds_dataset,
)
from hatnet_keras.data.synthetic import SHAPES, write_synthetic_dataset

__all__ = [
    "AugmentConfig",
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "find_unreadable_images",
    "holdout_splits",
    "image_folder_dataset",
    "tfds_dataset",
    "write_synthetic_dataset",
]
