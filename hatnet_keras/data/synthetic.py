"""A small synthetic "which shape is this?" image dataset for offline demos and tests."""

import math
import os

import numpy as np
from PIL import Image, ImageDraw

# Shapes in the order classes are taken from (num_classes picks a prefix).
SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
_MAX_TILT_DEGREES = 15.0  # small enough that a tilted square never looks like a diamond


def write_synthetic_dataset(
    directory, *, num_classes=4, images_per_class=60, image_size=64, seed=0
):
    """Write PNG images of simple shapes to `directory/<shape>/<shape>_NNNN.png`.

    Each image shows one filled shape (circle, square, triangle, cross,
    diamond, ring: the first `num_classes` of these) of random size,
    position, slight tilt and colour on a noisy random-gradient background.
    A small convnet learns the 4-class default (60 images per class) to
    ~90% validation accuracy in about a minute on CPU with light
    augmentation; ImageNet-strength augmentation (crop scale down to 0.08,
    RandAugment 9, MixUp/CutMix) makes it much slower to learn.
    Output is byte-for-byte deterministic given the arguments; existing
    files with the same names are overwritten, other files are left alone.

    Returns:
        The class names, sorted (the class order `image_folder_dataset` uses).

    Example:
        >>> import os, shutil, tempfile
        >>> from hatnet_keras.data import image_folder_dataset, write_synthetic_dataset
        >>> root = tempfile.mkdtemp()  # e.g. "/tmp/shapes"
        >>> classes = write_synthetic_dataset(root, images_per_class=20)
        >>> classes
        ['circle', 'cross', 'square', 'triangle']
        >>> sorted(os.listdir(os.path.join(root, "circle")))[:2]
        ['circle_0000.png', 'circle_0001.png']
        >>> val_ds, _ = image_folder_dataset(root, training=False,
        ...     image_size=64, validation_split=0.2, subset="validation")
        >>> images, one_hot_labels = next(iter(val_ds))
        >>> tuple(images.shape), tuple(one_hot_labels.shape)
        ((16, 64, 64, 3), (16, 4))
        >>> shutil.rmtree(root)
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}.")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be positive, got {images_per_class}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}.")
    shapes = SHAPES[:num_classes]
    for shape in shapes:
        os.makedirs(os.path.join(directory, shape), exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(images_per_class):
        for shape in shapes:
            image = _draw_example(shape, image_size, rng)
            Image.fromarray(image).save(os.path.join(directory, shape, f"{shape}_{index:04d}.png"))
    return sorted(shapes)


def _draw_example(shape, size, rng):
    """One `(size, size, 3)` uint8 image of `shape` drawn with `rng`."""
    # Dark backgrounds and light shapes (random hues): the class is in the
    # outline only, and that is easy to see.
    background = rng.uniform(0, 110, size=3)
    foreground = rng.uniform(140, 255, size=3)
    image = Image.fromarray(_noisy_background(background, size, rng))
    radius = rng.uniform(0.24, 0.4) * size
    margin = radius + 1
    centre = rng.uniform(margin, size - margin, size=2)
    tilt = math.radians(rng.uniform(-_MAX_TILT_DEGREES, _MAX_TILT_DEGREES))
    colour = tuple(int(c) for c in foreground)
    _draw_shape(ImageDraw.Draw(image), shape, centre, radius, tilt, colour)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _noisy_background(colour, size, rng):
    """`colour` plus a random linear gradient and per-pixel noise, as uint8."""
    ys, xs = np.mgrid[0:size, 0:size] / size - 0.5
    slope = rng.uniform(-40, 40, size=(2, 3))
    pixels = colour + ys[..., None] * slope[0] + xs[..., None] * slope[1]
    pixels = pixels + rng.normal(0, 12, size=(size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw_shape(draw, shape, centre, radius, tilt, colour):
    """Draw `shape` centred at `centre` with circumradius `radius`, rotated by `tilt`."""
    cx, cy = centre
    if shape in ("circle", "ring"):
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, int(radius * 0.35)))
        return
    points = _OUTLINES[shape]
    cos, sin = math.cos(tilt), math.sin(tilt)
    polygon = [
        (cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in points
    ]
    draw.polygon(polygon, fill=colour)


_ARM = 0.3  # half-width of the cross' arms, relative to the radius
_OUTLINES = {
    # Unit-radius outlines, y pointing down.
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "diamond": [(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)],
    "triangle": [(0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)],
    "cross": [
        (-_ARM, -1.0), (_ARM, -1.0), (_ARM, -_ARM), (1.0, -_ARM), (1.0, _ARM), (_ARM, _ARM),
        (_ARM, 1.0), (-_ARM, 1.0), (-_ARM, _ARM), (-1.0, _ARM), (-1.0, -_ARM), (-_ARM, -_ARM),
    ],
}
