"""Finding, splitting and checking the image files of a class-per-folder dataset."""

import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# How many file names an error message or report lists before "... and N more".
_MAX_LISTED = 10


def list_image_files(directory, class_names=None):
    """List the images of a dataset stored as `directory/<class name>/**/<image>`.

    Class indices follow `class_names` when given (subfolders it does not
    name are an error; names without a subfolder just have no images),
    otherwise the sorted subfolder names. Hidden subfolders (".name") are
    ignored; files are found recursively, extensions matched
    case-insensitively.

    Returns `(paths, labels, class_names)`: sorted path strings, int labels.

    Example:
        >>> import os, shutil, tempfile
        >>> from hatnet_keras.data import write_synthetic_dataset
        >>> from hatnet_keras.data.folder import list_image_files
        >>> root = tempfile.mkdtemp()  # e.g. "data/train", with circle/ and square/ here
        >>> _ = write_synthetic_dataset(root, num_classes=2, images_per_class=3)
        >>> paths, labels, classes = list_image_files(root)
        >>> classes
        ['circle', 'square']
        >>> labels, os.path.relpath(paths[0], root)
        ([0, 0, 0, 1, 1, 1], 'circle/circle_0000.png')
        >>> shutil.rmtree(root)
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"Image folder {directory!r} does not exist or is not a directory.")
    subfolders = sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not subfolders:
        raise ValueError(
            f"Image folder {directory!r} has no class subfolders; expected one "
            "subfolder of images per class, e.g. train/cat/*.jpg, train/dog/*.jpg."
        )
    if class_names is None:
        class_names = subfolders
    else:
        class_names = [str(name) for name in class_names]
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {class_names}")
        unknown = sorted(set(subfolders) - set(class_names))
        if unknown:
            raise ValueError(
                f"Image folder {directory!r} has subfolders {unknown} that are not "
                f"in class_names {class_names}."
            )
    paths, labels = [], []
    for index, name in enumerate(class_names):
        class_paths = _find_images(os.path.join(directory, name))
        paths.extend(class_paths)
        labels.extend([index] * len(class_paths))
    if not paths:
        raise ValueError(
            f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found under {directory!r} "
            f"in class subfolders {class_names}."
        )
    return paths, labels, list(class_names)


def _find_images(class_dir):
    """Sorted image paths under `class_dir` (recursive); [] if it does not exist."""
    found = []
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        dirs.sort()
        found.extend(
            os.path.join(root, name)
            for name in sorted(files)
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def split_files(paths, labels, validation_split, subset, seed):
    """Keep the `subset` ("training" or "validation") part of a seeded random split.

    The last `int(validation_split * n)` files of a permutation drawn with
    `seed` form the validation subset, the rest the training subset, so two
    calls with the same seed and fraction give disjoint, complementary subsets.
    With `validation_split=None` everything is kept.

    Example:
        >>> from hatnet_keras.data.folder import split_files
        >>> paths, labels = [f"img{i}.png" for i in range(5)], [0, 0, 1, 1, 1]
        >>> train = split_files(paths, labels, 0.4, "training", seed=0)
        >>> val = split_files(paths, labels, 0.4, "validation", seed=0)
        >>> train
        (['img2.png', 'img3.png', 'img4.png'], [1, 1, 1])
        >>> val
        (['img0.png', 'img1.png'], [0, 0])
    """
    check_split_args(validation_split, subset, seed)
    if validation_split is None:
        return list(paths), list(labels)
    num_val = int(validation_split * len(paths))
    if num_val == 0 or num_val == len(paths):
        raise ValueError(
            f"validation_split={validation_split} of {len(paths)} images leaves an empty subset."
        )
    order = np.random.default_rng(seed).permutation(len(paths))
    chosen = order[-num_val:] if subset == "validation" else order[:-num_val]
    chosen = np.sort(chosen)  # keep the listing order (deterministic, class-grouped)
    return [paths[i] for i in chosen], [labels[i] for i in chosen]


def check_split_args(validation_split, subset, seed):
    """Raise `ValueError` unless the `split_files` arguments make sense.

    Example:
        >>> from hatnet_keras.data.folder import check_split_args
        >>> check_split_args(0.2, "validation", seed=0)
    """
    if validation_split is None:
        if subset is not None:
            raise ValueError("subset requires validation_split to be set.")
        return
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split}.")
    if subset not in ("training", "validation"):
        raise ValueError(
            f'With validation_split, subset must be "training" or "validation", got {subset!r}.'
        )
    if seed is None:
        raise ValueError(
            "validation_split needs an integer seed, so that both subsets use the same split."
        )


def find_unreadable_images(paths):
    """Return the paths (in input order) that TensorFlow cannot read and decode.

    Every file is decoded once, in parallel inside `tf.data` (JPEGs at 1/8
    scale, which still reads all of the compressed data, so truncation is
    caught). Missing, empty, truncated and non-image files are all reported.

    Example:
        >>> import os, shutil, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> from hatnet_keras.data import find_unreadable_images
        >>> folder = tempfile.mkdtemp()
        >>> ok, broken = os.path.join(folder, "ok.png"), os.path.join(folder, "broken.jpg")
        >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(ok)
        >>> with open(broken, "wb") as file:
        ...     _ = file.write(b"not an image")
        >>> find_unreadable_images([ok, broken]) == [broken]
        True
        >>> shutil.rmtree(folder)
    """
    if not paths:
        return []
    probe = (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .map(
            tf.autograph.experimental.do_not_convert(lambda path: (path, _decoded_shape(path))),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        # Failing elements are dropped; whatever is missing afterwards is bad.
        .ignore_errors()
    )
    readable = {path.decode() for path, _ in probe.as_numpy_iterator()}
    return [path for path in paths if path not in readable]


def _decoded_shape(path):
    """Decode the file at `path` (a graph op) and return the image shape."""
    data = tf.io.read_file(path)
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.shape(tf.io.decode_jpeg(data, channels=3, ratio=8)),
        lambda: tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False)),
    )


def describe_files(paths, directory):
    """Short human-readable list of `paths`, relative to `directory`.

    Example:
        >>> from hatnet_keras.data.folder import describe_files
        >>> describe_files(["/d/cat/a.jpg"], "/d")
        'cat/a.jpg'
    """
    names = [os.path.relpath(path, directory) for path in paths]
    text = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        text += f", ... and {len(names) - _MAX_LISTED} more"
    return text
