"""Image transforms for the `tf.data` input pipelines.

Everything here runs inside `tf.data` (TensorFlow graph mode) whatever the
Keras backend is: Keras preprocessing layers switch themselves to TensorFlow
ops there, and `tf.image` fills the gaps Keras has no layer for (decoding,
random-resized crop with bicubic resize, eval resize + centre crop).

Images are float32 RGB in [0, 255]; labels are float32 one-hot vectors.
"""

import math

import keras
import tensorflow as tf

# Random-resized-crop aspect-ratio range (w / h), as in Inception / timm.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# RandAugment magnitudes are on the usual 0..10 scale (timm, the paper's
# ImageNet setting M=9); Keras' `factor` is that divided by this.
RANDAUGMENT_MAX_MAGNITUDE = 10.0
# timm's RandAugment ranges for its geometric ops at magnitude 10: rotation in
# degrees, shear, and translation as a fraction of the image size.
TIMM_MAX_ROTATION_DEGREES = 30.0
TIMM_MAX_SHEAR = 0.3
TIMM_MAX_TRANSLATION = 0.45


def decode_image(data):
    """Decode JPEG/PNG/BMP/GIF bytes to a `(h, w, 3)` uint8 RGB tensor.

    Grayscale and palette images become RGB, an alpha channel is dropped and
    only the first frame of an animated GIF is kept.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import decode_image
        >>> data = tf.io.encode_png(tf.zeros([4, 6, 1], tf.uint8))  # or tf.io.read_file("cat.png")
        >>> image = decode_image(data)  # a grayscale PNG, decoded to RGB
        >>> image.shape, image.dtype
        (TensorShape([4, 6, 3]), tf.uint8)
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_rgb(image):
    """Return `image` (`(h, w, c)`, c in 1..4) with exactly 3 channels.

    One channel (grayscale) is repeated, a second (gray+alpha) or fourth
    (RGBA) alpha channel is dropped.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import to_rgb
        >>> to_rgb(tf.zeros([8, 8, 1], tf.uint8)).shape
        TensorShape([8, 8, 3])
    """
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels in (1, 2):
        return tf.tile(image[..., :1], [1, 1, 3])
    if channels == 4:
        return image[..., :3]
    rgb = tf.cond(
        tf.shape(image)[-1] < 3,
        lambda: tf.tile(image[..., :1], [1, 1, 3]),
        lambda: image[..., :3],
    )
    rgb.set_shape([None, None, 3])
    return rgb


def _resize_bicubic(image, size):
    # antialias=True makes downscaling behave like PIL's bicubic (as in timm);
    # bicubic overshoots, so clip back to the pixel range.
    image = tf.image.resize(
        tf.cast(image, tf.float32), size, method="bicubic", antialias=True
    )
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(image, size, seed, scale=(0.08, 1.0), ratio=CROP_RATIO):
    """Crop a random area/aspect-ratio box and resize it to `size x size`.

    The box covers a fraction of the image area drawn from `scale` with an
    aspect ratio drawn from `ratio`; when no box fits in 10 attempts the
    whole image is used. `seed` is a stateless seed (shape `(2,)` int tensor).

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import random_resized_crop
        >>> image = tf.random.uniform([48, 64, 3], maxval=255)
        >>> seed = tf.random.Generator.from_seed(0).make_seeds(1)[:, 0]
        >>> random_resized_crop(image, 32, seed).shape
        TensorShape([32, 32, 3])
    """
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    resized = _resize_bicubic(crop, [size, size])
    resized.set_shape([size, size, image.shape[-1]])
    return resized


def resize_and_center_crop(image, size, crop_fraction=0.875):
    """Eval transform: resize the short side to `size / crop_fraction`, centre-crop `size`.

    The short side becomes `floor(size / crop_fraction)` (256 for 224 at
    0.875), the long side keeps the aspect ratio; resizing is bicubic.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import resize_and_center_crop
        >>> resize_and_center_crop(tf.zeros([300, 400, 3]), 224).shape
        TensorShape([224, 224, 3])
    """
    short_target = max(size, int(math.floor(size / crop_fraction)))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = short_target / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    resized = _resize_bicubic(image, new_shape)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    cropped = tf.slice(resized, [top, left, 0], [size, size, 3])
    cropped.set_shape([size, size, 3])
    return cropped


class BincountEqualization(keras.layers.Equalization):
    """`keras.layers.Equalization` that stays fast inside `tf.data` on every backend.

    Keras chooses its histogram implementation from the *global* backend: under
    JAX it uses a 256-step Python loop (bincount cannot be jit-traced), even
    inside `tf.data`, where the layer actually runs TensorFlow ops and
    `bincount` works. That loop made tracing RandAugment take ~30 s and made
    every image pay 768 extra full-image passes. This subclass uses bincount
    whenever the layer is running TensorFlow ops, and Keras' own code
    otherwise; the result is the same.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import BincountEqualization
        >>> images = tf.reshape(tf.range(2 * 8 * 8 * 3, dtype=tf.float32) % 200, [2, 8, 8, 3])
        >>> ds = tf.data.Dataset.from_tensor_slices((images, [0, 1])).batch(2)
        >>> ds = ds.map(lambda x, y: (BincountEqualization()(x), y))
        >>> equalized, _ = next(iter(ds))
        >>> equalized.shape, float(tf.reduce_max(equalized)) > float(tf.reduce_max(images))
        (TensorShape([2, 8, 8, 3]), True)
    """

    def _custom_histogram_fixed_width(self, values, value_range, nbins):
        if self.backend.name != "tensorflow":
            return super()._custom_histogram_fixed_width(values, value_range, nbins)
        low, high = (float(v) for v in value_range)
        values = tf.cast(values, tf.float32)
        bins = tf.cast((values - low) * ((nbins - 1) / (high - low)), tf.int32)
        bins = tf.clip_by_value(tf.reshape(bins, [-1]), 0, nbins - 1)
        return tf.math.bincount(bins, minlength=nbins, maxlength=nbins, dtype=tf.int32)


class FastRandAugment(keras.layers.RandAugment):
    """`keras.layers.RandAugment` that only computes the ops it applies, inside `tf.data`.

    Keras' RandAugment runs all 11 candidate ops for each of its `num_ops`
    steps and keeps the chosen result with `where`: 22 full transforms per
    image, about 4x the cost of this version at 224 px. When running
    TensorFlow ops, as in `tf.data`, this subclass dispatches with
    `tf.switch_case` so only the chosen op runs; elsewhere it is Keras' code.
    With the same ranges (`geometric_ranges="keras"`) the ops, their random
    parameters and the result are those of Keras' layer. It also uses
    `BincountEqualization` for the equalize op.

    Its geometric ops take timm's ranges by default (`geometric_ranges="timm"`),
    the RandAugment of the paper's recipe: at `factor` f, rotations up to
    +-30f degrees, shears up to +-0.3f and translations up to +-0.45f of the
    size, each drawn uniformly. Keras' own ranges (`geometric_ranges="keras"`)
    are one-sided and much wider: at f = 0.9, rotations of 0 to 324 degrees and
    translations of 0 to 90% of the size.

    Args:
        geometric_ranges: `"timm"` or `"keras"`, as above.
        **kwargs: `keras.layers.RandAugment`'s arguments.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import FastRandAugment
        >>> images = tf.random.stateless_uniform([2, 16, 16, 3], seed=(0, 0), maxval=255)
        >>> ds = tf.data.Dataset.from_tensor_slices((images, [0, 1])).batch(2)
        >>> layer = FastRandAugment(value_range=(0, 255), factor=0.9, seed=1)
        >>> ds = ds.map(lambda x, y: (layer(x), y))
        >>> augmented, _ = next(iter(ds))
        >>> augmented.shape
        TensorShape([2, 16, 16, 3])
    """

    def __init__(self, geometric_ranges="timm", **kwargs):
        if geometric_ranges not in ("timm", "keras"):
            raise ValueError(
                f"geometric_ranges must be 'timm' or 'keras', got {geometric_ranges!r}."
            )
        super().__init__(**kwargs)
        self.geometric_ranges = geometric_ranges
        self.equalization = BincountEqualization(
            value_range=self.value_range, data_format=self.data_format
        )
        if geometric_ranges == "timm":
            self._use_timm_geometric_ranges()

    def _use_timm_geometric_ranges(self):
        strength = self.factor[1]
        shared = dict(
            interpolation=self.interpolation,
            seed=self.seed,
            data_format=self.data_format,
            dtype=self.dtype_policy,
        )
        self.random_rotation = keras.layers.RandomRotation(
            factor=strength * TIMM_MAX_ROTATION_DEGREES / 360.0, **shared
        )
        self.random_shear = keras.layers.RandomShear(
            x_factor=strength * TIMM_MAX_SHEAR, y_factor=strength * TIMM_MAX_SHEAR, **shared
        )
        self.random_translation = keras.layers.RandomTranslation(
            height_factor=strength * TIMM_MAX_TRANSLATION,
            width_factor=strength * TIMM_MAX_TRANSLATION,
            **shared,
        )

    def get_config(self):
        return {**super().get_config(), "geometric_ranges": self.geometric_ranges}

    def transform_images(self, images, transformation, training=True):
        if not training or self.backend.name != "tensorflow":
            return super().transform_images(images, transformation, training=training)
        images = tf.cast(images, self.compute_dtype)
        # Branch k is the k-th op of `transforms`, the indexing Keras uses.
        ops = [
            (getattr(self, name), params)
            for name, params in transformation["transforms"].items()
        ]
        for step in range(self.num_ops):
            branches = [
                lambda layer=layer, params=params, x=images: tf.cast(
                    layer.transform_images(x, params), self.compute_dtype
                )
                for layer, params in ops
            ]
            shape = images.shape
            images = tf.switch_case(transformation["layer_idxes"][step], branches)
            images.set_shape(shape)
        return images


def make_image_augmenter(config, seed=None):
    """Per-image training augmentation (flip, RandAugment) as a `keras.layers.Pipeline`.

    Takes and returns one float32 `(h, w, 3)` image in [0, 255]. Returns
    `None` when `config` enables neither op. Random-resized crop is not part
    of it (it is a `tf.image` op, see `random_resized_crop`).

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data import AugmentConfig
        >>> from hatnet_keras.data.transforms import make_image_augmenter
        >>> images = tf.random.stateless_uniform([2, 16, 16, 3], seed=(0, 0), maxval=255)
        >>> ds = tf.data.Dataset.from_tensor_slices((images, [0, 1]))
        >>> augment = make_image_augmenter(AugmentConfig(), seed=0)
        >>> [type(layer).__name__ for layer in augment.layers]
        ['RandomFlip', 'FastRandAugment']
        >>> ds = ds.map(lambda x, y: (augment(x), y))
        >>> [x.shape for x, _ in ds]
        [TensorShape([16, 16, 3]), TensorShape([16, 16, 3])]
    """
    layers = []
    if config.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=_offset(seed, 1)))
    if config.randaugment_magnitude is not None:
        layers.append(
            FastRandAugment(
                value_range=(0, 255),
                num_ops=2,
                factor=config.randaugment_magnitude / RANDAUGMENT_MAX_MAGNITUDE,
                seed=_offset(seed, 2),
            )
        )
    return keras.layers.Pipeline(layers) if layers else None


def make_cutmix(alpha, seed=None):
    """`keras.layers.CutMix` whose box area is drawn from Beta(alpha, alpha).

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import make_cutmix
        >>> images, one_hot_labels = tf.zeros([4, 16, 16, 3]), tf.one_hot([0, 1, 2, 3], 4)
        >>> ds = tf.data.Dataset.from_tensors({"images": images, "labels": one_hot_labels})
        >>> cutmix = make_cutmix(1.0, seed=0)
        >>> mixed = next(iter(ds.map(cutmix)))
        >>> mixed["images"].shape, tf.reduce_sum(mixed["labels"], axis=-1).numpy().round(4)
        (TensorShape([4, 16, 16, 3]), array([1., 1., 1., 1.], dtype=float32))
    """
    layer = keras.layers.CutMix(factor=(min(alpha, 1.0),) * 2, seed=seed)
    # CutMix draws its Beta concentration uniformly from `factor`, and its
    # constructor caps `factor` at 1; a (alpha, alpha) range fixes it at alpha.
    layer.factor = (float(alpha), float(alpha))
    return layer


def make_batch_augmenter(config, seed=None):
    """Per-batch training augmentation: random erasing, then MixUp or CutMix.

    The returned function maps a batch `(images, one_hot_labels)` to the
    augmented batch, for `tf.data.Dataset.map`. When both MixUp and CutMix are
    enabled, each batch gets CutMix with probability `config.mix_switch_prob`
    and MixUp otherwise. Returns `None` when `config` enables none of them.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data import AugmentConfig
        >>> from hatnet_keras.data.transforms import make_batch_augmenter
        >>> images, labels = tf.zeros([8, 16, 16, 3]), tf.one_hot([0, 1, 2, 3] * 2, 4)
        >>> ds = tf.data.Dataset.from_tensor_slices((images, labels))
        >>> augment = make_batch_augmenter(AugmentConfig(), seed=0)
        >>> ds = ds.batch(4, drop_remainder=True).map(augment)
        >>> [(x.shape, y.shape) for x, y in ds]  # doctest: +NORMALIZE_WHITESPACE
        [(TensorShape([4, 16, 16, 3]), TensorShape([4, 4])),
         (TensorShape([4, 16, 16, 3]), TensorShape([4, 4]))]
    """
    erasing = None
    if config.erasing_prob > 0:
        # A (p, p) factor range makes the per-image erase probability exactly p
        # (a bare float p means "uniform in [0, p]", i.e. p / 2 on average).
        erasing = keras.layers.RandomErasing(
            factor=(config.erasing_prob, config.erasing_prob),
            value_range=(0, 255),
            seed=_offset(seed, 3),
        )
    mixup = None
    if config.mixup_alpha > 0:
        mixup = keras.layers.MixUp(alpha=config.mixup_alpha, seed=_offset(seed, 4))
    cutmix = None
    if config.cutmix_alpha > 0:
        cutmix = make_cutmix(config.cutmix_alpha, seed=_offset(seed, 5))
    if erasing is None and mixup is None and cutmix is None:
        return None
    switch = seed_generator(_offset(seed, 6))

    def mix(layer, images, labels):
        out = layer({"images": images, "labels": labels})
        return out["images"], out["labels"]

    def augment(images, labels):
        if erasing is not None:
            images = erasing(images)
        if mixup is not None and cutmix is not None:
            draw = tf.random.stateless_uniform([], seed=switch.make_seeds(1)[:, 0])
            images, labels = tf.cond(
                draw < config.mix_switch_prob,
                lambda: mix(cutmix, images, labels),
                lambda: mix(mixup, images, labels),
            )
        elif mixup is not None:
            images, labels = mix(mixup, images, labels)
        elif cutmix is not None:
            images, labels = mix(cutmix, images, labels)
        return tf.clip_by_value(images, 0.0, 255.0), labels

    return augment


def _offset(seed, k):
    """A distinct seed per augmentation op, or None (non-deterministic)."""
    return None if seed is None else seed + k


def seed_generator(seed):
    """A `tf.random.Generator` to draw stateless-op seeds from inside `tf.data.map`.

    Its state is a variable, so unlike an op-level seed the random stream
    goes on across epochs instead of restarting with each new iterator.
    `seed=None` gives a non-deterministic generator.

    Example:
        >>> import tensorflow as tf
        >>> from hatnet_keras.data.transforms import random_resized_crop, seed_generator
        >>> ds = tf.data.Dataset.from_tensors(tf.zeros([48, 64, 3])).repeat(2)
        >>> seeds = seed_generator(0)
        >>> ds = ds.map(lambda x: random_resized_crop(x, 32, seeds.make_seeds(1)[:, 0]))
        >>> [x.shape for x in ds]
        [TensorShape([32, 32, 3]), TensorShape([32, 32, 3])]
    """
    if seed is None:
        return tf.random.Generator.from_non_deterministic_state()
    return tf.random.Generator.from_seed(seed)
