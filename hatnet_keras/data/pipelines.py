"""`tf.data` input pipelines for training and evaluating image classifiers.

Both builders return `(dataset, class_names)`. The dataset yields
`(images, labels)` batches: images float32 `(batch, size, size, 3)` RGB in
[0, 255] (models normalise inside themselves), labels float32 one-hot
`(batch, num_classes)`, softened by MixUp/CutMix when training. Label
smoothing is left to the loss.

* `training=True`: shuffle, random-resized crop (bicubic), horizontal flip,
  RandAugment, batch with `drop_remainder=True`, random erasing, then per batch
  CutMix or MixUp. No `repeat()`: `Model.fit` iterates once per epoch.
* `training=False`: resize the short side to `size / eval_crop_fraction`
  (bicubic), centre crop; files/examples in a fixed order, last partial batch
  kept.

The augmentations are Keras preprocessing layers run inside `tf.data`, so the
pipelines work with any `KERAS_BACKEND` (tensorflow, jax, torch). RandAugment
is `transforms.FastRandAugment`, a subclass of `keras.layers.RandAugment` with
the same ops and results that computes only the ops it applies.

Image size rule: the `image_size` argument of the builders always wins; the
`image_size` field of an `augment` config passed alongside is ignored.
"""

import dataclasses

import tensorflow as tf

from hatnet_keras.data import folder, transforms

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class AugmentConfig:
    """Training augmentation and eval-transform settings.

    Attributes:
        image_size: Output height and width. Overridden by the builders'
            `image_size` argument.
        crop_scale: Area range (fraction of the image) of the random-resized
            crop; aspect ratios are drawn from (3/4, 4/3), resizing is bicubic.
        horizontal_flip: Randomly mirror images left-right.
        randaugment_magnitude: RandAugment strength on the usual 0..10 scale
            (2 ops per image), or None to disable. It is passed to
            `keras.layers.RandAugment` as `factor=magnitude / 10`; each op's
            strength is then drawn uniformly up to factor. The geometric ops
            use timm's ranges (rotation up to +-30 degrees, shear up to
            +-0.3, translation up to +-0.45 of the size, times factor),
            see `transforms.FastRandAugment`.
        mixup_alpha: MixUp Beta(alpha, alpha) concentration; 0 disables.
        cutmix_alpha: CutMix Beta(alpha, alpha) concentration; 0 disables.
        mix_switch_prob: When MixUp and CutMix are both enabled, each batch
            gets CutMix with this probability and MixUp otherwise.
        erasing_prob: Probability that an image gets a random-erasing box
            (`keras.layers.RandomErasing`, random-noise fill); 0 disables.
        eval_crop_fraction: Eval resizes the short side to
            `floor(image_size / eval_crop_fraction)` then centre-crops.

    Example:

    ```python
    light = AugmentConfig(randaugment_magnitude=None, mixup_alpha=0.0,
                          cutmix_alpha=0.0, erasing_prob=0.0)
    ds, classes = image_folder_dataset("data/train", training=True,
                                       augment=light)
    ```
    """

    image_size: int = 224
    crop_scale: tuple = (0.08, 1.0)
    horizontal_flip: bool = True
    randaugment_magnitude: float | None = 9
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_switch_prob: float = 0.5
    erasing_prob: float = 0.25
    eval_crop_fraction: float = 0.875

    def __post_init__(self):
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}."
            )
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}.")
        magnitude = self.randaugment_magnitude
        if magnitude is not None and not 0 <= magnitude <= transforms.RANDAUGMENT_MAX_MAGNITUDE:
            raise ValueError(f"randaugment_magnitude must be in [0, 10] or None, got {magnitude}.")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0 (0 disables).")
        for name in ("mix_switch_prob", "erasing_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if not 0.0 < self.eval_crop_fraction <= 1.0:
            raise ValueError(
                f"eval_crop_fraction must be in (0, 1], got {self.eval_crop_fraction}."
            )


def image_folder_dataset(
    directory,
    *,
    training,
    image_size=224,
    batch_size=32,
    augment=None,
    class_names=None,
    validation_split=None,
    subset=None,
    seed=0,
    skip_corrupt=False,
    shuffle_buffer=1024,
):
    """Batches of `(images, one_hot_labels)` from `directory/<class>/<images>`.

    Class indices are the sorted subfolder names, or the order of
    `class_names` (pass the training classes when building the eval set).
    Images are .jpg/.jpeg/.png/.bmp/.gif (any case), searched recursively.

    Every selected file is decoded once up front; unreadable ones (truncated,
    not really images, ...) raise a `ValueError` that names them, or with
    `skip_corrupt=True` are left out and reported on stdout.

    Args:
        directory: Dataset root with one subfolder per class.
        training: Training augmentation and shuffling, or the eval transform.
        image_size: Output size; overrides `augment.image_size`.
        batch_size: Batch size (training drops the last partial batch).
        augment: `AugmentConfig`; None means `AugmentConfig(image_size=image_size)`.
        class_names: Fixed class order. A subfolder not in it is an error; a
            name without a subfolder is a class with no images.
        validation_split: Fraction of files held out, or None.
        subset: "training" or "validation" when `validation_split` is set.
        seed: Seed of the split, the shuffle and the augmentations (None:
            non-deterministic augmentation; the split needs an int).
        skip_corrupt: Skip unreadable files instead of raising.
        shuffle_buffer: Minimum shuffle buffer. The buffer holds only paths,
            so it is raised to the number of files: every epoch is a full
            reshuffle, even when the files are sorted by class.

    Returns:
        `(dataset, class_names)`.

    Example:

    ```python
    train_ds, classes = image_folder_dataset(
        "data/train", training=True, image_size=224, batch_size=64)
    val_ds, _ = image_folder_dataset(
        "data/val", training=False, class_names=classes)
    model.fit(train_ds, validation_data=val_ds, epochs=10)
    ```
    """
    config = _resolve_config(augment, image_size)
    folder.check_split_args(validation_split, subset, seed)
    paths, labels, class_names = folder.list_image_files(directory, class_names)
    paths, labels = folder.split_files(paths, labels, validation_split, subset, seed)
    paths, labels = _drop_unreadable(paths, labels, directory, skip_corrupt)
    if training and len(paths) < batch_size:
        raise ValueError(
            f"Only {len(paths)} images for batch_size={batch_size}: training drops the "
            "last partial batch, so this would yield no batches at all."
        )

    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:
        dataset = dataset.shuffle(
            max(len(paths), shuffle_buffer), seed=seed, reshuffle_each_iteration=True
        )
    dataset = _map(
        dataset, lambda path, label: (transforms.decode_image(tf.io.read_file(path)), label)
    )
    return _finish(dataset, training, len(class_names), batch_size, config, seed), class_names


def tfds_dataset(
    name,
    split,
    *,
    training,
    image_size=224,
    batch_size=32,
    augment=None,
    data_dir=None,
    manual_dir=None,
    seed=0,
    shuffle_buffer=1024,
    download=True,
):
    """Batches of `(images, one_hot_labels)` from a TensorFlow Datasets image classifier.

    Works for any TFDS dataset with `image` and (class) `label` features,
    e.g. "imagenette", "tf_flowers", "imagenet2012" (which needs the
    manually downloaded archives in `manual_dir`). Grayscale images are
    converted to RGB.

    Args:
        name: TFDS name, optionally with config/version ("imagenette/320px-v2").
        split: TFDS split string, e.g. "train", "validation", "train[:90%]".
        training: Training augmentation and shuffling, or the eval transform.
        image_size: Output size; overrides `augment.image_size`.
        batch_size: Batch size (training drops the last partial batch).
        augment: `AugmentConfig`; None means `AugmentConfig(image_size=image_size)`.
        data_dir: TFDS data directory (None: TFDS default, ~/tensorflow_datasets).
        manual_dir: Directory with manually downloaded files, if the dataset needs them.
        seed: Seed of file/example shuffling and the augmentations.
        shuffle_buffer: Example shuffle buffer size when training.
        download: Download and prepare the dataset first if needed; with
            False it must already be prepared in `data_dir`.

    Returns:
        `(dataset, class_names)`, class names from the label feature.

    Example:

    ```python
    train_ds, classes = tfds_dataset("imagenette/320px-v2", "train",
                                     training=True, batch_size=64)
    val_ds, _ = tfds_dataset("imagenette/320px-v2", "validation",
                             training=False, batch_size=64)
    ```
    """
    import tensorflow_datasets as tfds  # slow import, only needed here

    from hatnet_keras.data import shapes_tfds  # noqa: F401  (registers "hatnet_shapes")

    config = _resolve_config(augment, image_size)
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
    label_feature = builder.info.features["label"]
    class_names = list(getattr(label_feature, "names", None) or [])
    if not class_names:
        raise ValueError(f"TFDS dataset {name!r} has no class-label feature named 'label'.")
    dataset = builder.as_dataset(
        split=split,
        as_supervised=True,
        shuffle_files=training,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = _map(dataset, lambda image, label: (transforms.to_rgb(image), label))
    return _finish(dataset, training, len(class_names), batch_size, config, seed), class_names


def holdout_splits(split_names, holdout=0.1):
    """`(train split, evaluation split)` for a TFDS dataset with these split names.

    A dataset with "train" and "validation" (or else "test") splits uses them;
    one with only "train" (e.g. tf_flowers) holds out its last `holdout` fraction
    for evaluation, with TFDS' slicing syntax.

    Example:
    >>> from hatnet_keras.data import holdout_splits
    >>> holdout_splits(["train"])  # the split names of tf_flowers
    ('train[:90%]', 'train[90%:]')
    >>> holdout_splits(["train", "test"])
    ('train', 'test')

    ```python
    holdout_splits(tfds.builder("tf_flowers").info.splits)  # ('train[:90%]', 'train[90%:]')
    ```
    """
    names = set(split_names)
    if "train" not in names:
        raise ValueError(f"No 'train' split among {sorted(names)}.")
    for name in ("validation", "test"):
        if name in names:
            return "train", name
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1); got {holdout}.")
    percent = round(100 * (1.0 - holdout))
    return f"train[:{percent}%]", f"train[{percent}%:]"


def _map(dataset, fn, **kwargs):
    """Parallel `dataset.map(fn)`, skipping AutoGraph: our functions are plain graph code."""
    fn = tf.autograph.experimental.do_not_convert(fn)
    return dataset.map(fn, num_parallel_calls=AUTOTUNE, **kwargs)


def _resolve_config(augment, image_size):
    """The `AugmentConfig` to use, with `image_size` taking precedence."""
    if augment is None:
        return AugmentConfig(image_size=image_size)
    return dataclasses.replace(augment, image_size=image_size)


def _drop_unreadable(paths, labels, directory, skip_corrupt):
    """Raise on unreadable images, or drop them and say so when `skip_corrupt`."""
    bad = set(folder.find_unreadable_images(paths))
    if not bad:
        return paths, labels
    listed = folder.describe_files(sorted(bad), directory)
    if not skip_corrupt:
        raise ValueError(
            f"{len(bad)} unreadable image file(s) in {str(directory)!r}: {listed}. "
            "Fix or remove them, or pass skip_corrupt=True to skip them."
        )
    print(f"skipped {len(bad)} unreadable images: {listed}")
    kept = [(path, label) for path, label in zip(paths, labels) if path not in bad]
    if not kept:
        raise ValueError(f"No readable images left in {str(directory)!r}.")
    return [path for path, _ in kept], [label for _, label in kept]


def _finish(dataset, training, num_classes, batch_size, config, seed):
    """Transform, batch and prefetch a dataset of `(uint8 image, int label)`."""

    def one_hot(label):
        return tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)

    size = config.image_size
    if not training:
        dataset = _map(
            dataset,
            lambda image, label: (
                transforms.resize_and_center_crop(image, size, config.eval_crop_fraction),
                one_hot(label),
            ),
            deterministic=True,
        )
        return dataset.batch(batch_size).prefetch(AUTOTUNE)

    # tf.data runs on the CPU, so the random-state variables the augmenters
    # create (TensorFlow backend) must live there too, not on a GPU.
    with tf.device("/CPU:0"):
        crop_seeds = transforms.seed_generator(seed)
        image_augmenter = transforms.make_image_augmenter(config, seed)
        batch_augmenter = transforms.make_batch_augmenter(config, seed)

    def augment_image(image, label):
        seed_pair = crop_seeds.make_seeds(1)[:, 0]
        image = transforms.random_resized_crop(image, size, seed_pair, scale=config.crop_scale)
        if image_augmenter is not None:
            image = tf.clip_by_value(image_augmenter(image), 0.0, 255.0)
        image.set_shape([size, size, 3])
        return image, one_hot(label)

    dataset = _map(dataset, augment_image)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if batch_augmenter is not None:
        dataset = _map(dataset, batch_augmenter)
    return dataset.prefetch(AUTOTUNE)
