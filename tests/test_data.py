"""Tests of the tf.data input pipelines (hatnet_keras.data); run under every KERAS_BACKEND."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hatnet_keras.data import (
    AugmentConfig,
    image_folder_dataset,
    tfds_dataset,
    write_synthetic_dataset,
)
from hatnet_keras.data.transforms import BincountEqualization, FastRandAugment

CLASSES = ["ant", "bee", "cat"]
PER_CLASS = 6
SIZE = 32
# Everything off but the pipeline's deterministic parts: fast to build.
PLAIN = AugmentConfig(
    randaugment_magnitude=None, mixup_alpha=0.0, cutmix_alpha=0.0, erasing_prob=0.0
)


def _uniform_image(class_index, image_index):
    """A 40x50 image whose colour encodes its class (green) and its id (red)."""
    colour = (12 * image_index + 6, 80 * class_index, 128)
    return Image.new("RGB", (50, 40), colour)


def _decode_ids(images):
    """Recover the (class, id) pairs from eval-transformed `_uniform_image`s."""
    centre = np.asarray(images)[:, SIZE // 2, SIZE // 2]
    return [(int(round(g / 80)), int(round((r - 6) / 12))) for r, g, _ in centre]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes x 6 uniform-colour images (PNG, plus upper-case .JPG/.BMP/.GIF)."""
    root = tmp_path_factory.mktemp("folder")
    suffixes = [".png", ".png", ".JPG", ".bmp", ".gif", ".png"]
    image_id = 0
    for class_index, name in enumerate(CLASSES):
        (root / name).mkdir()
        for k in range(PER_CLASS):
            image = _uniform_image(class_index, image_id)
            options = {"quality": 100} if suffixes[k] == ".JPG" else {}
            image.save(root / name / f"img{k}{suffixes[k]}", **options)
            image_id += 1
        (root / name / "notes.txt").write_text("not an image, ignored")
    return root


def _collect(dataset):
    """All batches of `dataset` as numpy arrays (list of (images, labels))."""
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_eval_pipeline_shapes_values_and_determinism(image_folder):
    dataset, classes = image_folder_dataset(
        image_folder, training=False, image_size=SIZE, batch_size=4
    )
    assert classes == CLASSES
    first, second = _collect(dataset), _collect(dataset)
    assert [len(x) for x, _ in first] == [4, 4, 4, 4, 2]  # remainder kept
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    images = np.concatenate([x for x, _ in first])
    labels = np.concatenate([y for _, y in first])
    assert images.dtype == np.float32 and images.shape == (18, SIZE, SIZE, 3)
    assert labels.dtype == np.float32 and labels.shape == (18, 3)
    assert images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
    ids = _decode_ids(images)
    assert [c for c, _ in ids] == list(labels.argmax(axis=1))
    assert sorted(i for _, i in ids) == list(range(18))


def test_training_pipeline_batches_are_augmented_and_mixed(image_folder):
    dataset, classes = image_folder_dataset(
        image_folder, training=True, image_size=SIZE, batch_size=4, seed=1
    )
    assert classes == CLASSES
    assert dataset.element_spec[0].shape.as_list() == [4, SIZE, SIZE, 3]
    epochs = [_collect(dataset), _collect(dataset)]
    for batches in epochs:
        assert len(batches) == 4  # 18 images, remainder of 2 dropped
        for images, labels in batches:
            assert images.dtype == np.float32 and images.shape == (4, SIZE, SIZE, 3)
            assert images.min() >= 0 and images.max() <= 255
            assert labels.dtype == np.float32 and labels.shape == (4, 3)
            np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    labels = np.concatenate([y for batches in epochs for _, y in batches])
    assert (labels.max(axis=1) < 0.999).any(), "MixUp/CutMix never softened a label"
    # Random augmentation goes on across epochs instead of repeating.
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])


def test_mixup_only_gives_soft_labels(image_folder):
    config = dataclasses.replace(PLAIN, mixup_alpha=1.0)
    dataset, _ = image_folder_dataset(
        image_folder, training=True, image_size=SIZE, batch_size=6, augment=config
    )
    labels = np.concatenate([y for _, y in _collect(dataset)])
    assert labels.shape == (18, 3)
    assert (labels.max(axis=1) < 0.999).any()


def test_validation_split_is_disjoint_and_complete(image_folder):
    def ids(subset):
        dataset, _ = image_folder_dataset(
            image_folder, training=False, image_size=SIZE, batch_size=8,
            validation_split=0.25, subset=subset, seed=3,
        )
        return _decode_ids(np.concatenate([x for x, _ in _collect(dataset)]))

    train, val = ids("training"), ids("validation")
    assert len(train) == 14 and len(val) == 4  # int(0.25 * 18) == 4
    assert not set(train) & set(val)
    assert sorted(i for _, i in train + val) == list(range(18))
    assert ids("validation") == val  # same seed, same split


def test_class_names_fix_the_label_order(image_folder):
    order = ["cat", "ant", "bee"]
    dataset, classes = image_folder_dataset(
        image_folder, training=False, image_size=SIZE, batch_size=18, augment=PLAIN,
        class_names=order,
    )
    assert classes == order
    images, labels = _collect(dataset)[0]
    folder_class = [CLASSES[c] for c, _ in _decode_ids(images)]
    assert [order[i] for i in labels.argmax(axis=1)] == folder_class
    with pytest.raises(ValueError, match="not in class_names"):
        image_folder_dataset(image_folder, training=False, class_names=["ant", "bee"])


def test_bad_folders_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        image_folder_dataset(tmp_path / "missing", training=False)
    with pytest.raises(ValueError, match="no class subfolders"):
        image_folder_dataset(tmp_path, training=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="No image files"):
        image_folder_dataset(tmp_path, training=False)
    with pytest.raises(ValueError, match="subset"):
        image_folder_dataset(tmp_path, training=False, validation_split=0.2, subset="test")


def test_eval_transform_resizes_and_centre_crops(tmp_path):
    # Red grows 4 per column, green 4 per row, so pixel values map back to
    # source coordinates: bicubic reproduces linear ramps exactly.
    rows, cols = np.mgrid[0:40, 0:50]
    ramp = np.stack([4 * cols, 4 * rows, np.full_like(rows, 100)], axis=-1).astype(np.uint8)
    (tmp_path / "only").mkdir()
    Image.fromarray(ramp).save(tmp_path / "only" / "ramp.png")
    dataset, _ = image_folder_dataset(tmp_path, training=False, image_size=SIZE, batch_size=1)
    image = _collect(dataset)[0][0][0]
    # Short side 40 -> floor(32 / 0.875) = 36 (scale 0.9), so 36 x 45; the
    # centre 32 x 32 crop starts at row 2, column 6 of the resized image.
    scale, top, left = 0.9, 2, 6
    source_col = (left + np.arange(SIZE) + 0.5) / scale - 0.5
    source_row = (top + np.arange(SIZE) + 0.5) / scale - 0.5
    np.testing.assert_allclose(image[SIZE // 2, :, 0], 4 * source_col, atol=1.0)
    np.testing.assert_allclose(image[:, SIZE // 2, 1], 4 * source_row, atol=1.0)
    np.testing.assert_allclose(image[..., 2], 100, atol=1.0)


@pytest.fixture
def folder_with_corrupt_files(tmp_path):
    """2 good images plus a truncated JPEG and a text file named .png."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a" / "good.jpg")
    Image.fromarray(noise).save(tmp_path / "b" / "good.png")
    data = (tmp_path / "a" / "good.jpg").read_bytes()
    (tmp_path / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "b" / "fake.png").write_text("this is not a PNG")
    return tmp_path


def test_corrupt_images_raise_an_error_naming_them(folder_with_corrupt_files):
    with pytest.raises(ValueError) as error:
        image_folder_dataset(folder_with_corrupt_files, training=False)
    message = str(error.value)
    assert "2 unreadable" in message
    assert os.path.join("a", "truncated.jpg") in message
    assert os.path.join("b", "fake.png") in message
    assert "skip_corrupt" in message


def test_skip_corrupt_skips_and_reports(folder_with_corrupt_files, capsys):
    dataset, classes = image_folder_dataset(
        folder_with_corrupt_files, training=False, image_size=SIZE, batch_size=4, skip_corrupt=True
    )
    out = capsys.readouterr().out
    assert "skipped 2 unreadable images" in out
    assert "truncated.jpg" in out and "fake.png" in out
    (images, labels), = _collect(dataset)
    assert classes == ["a", "b"] and images.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(labels, np.eye(2, dtype=np.float32))
    # Training drops partial batches: 2 images cannot fill a batch of 4.
    with pytest.raises(ValueError, match="no batches"):
        image_folder_dataset(
            folder_with_corrupt_files, training=True, batch_size=4, skip_corrupt=True
        )


def test_tfds_pipeline_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        config = dataclasses.replace(PLAIN, mixup_alpha=0.8)
        train, classes = tfds_dataset(
            "tf_flowers", "train", training=True, image_size=SIZE, batch_size=4,
            augment=config, data_dir=tmp_path,
        )
        assert classes[:2] == ["dandelion", "daisy"] and len(classes) == 5
        batches = _collect(train)
        assert len(batches) == 2  # 10 examples, remainder dropped
        images, labels = batches[0]
        assert images.shape == (4, SIZE, SIZE, 3) and labels.shape == (4, 5)
        assert images.min() >= 0 and images.max() <= 255
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)

        # MNIST is grayscale: it must come out as RGB.
        test, digits = tfds_dataset(
            "mnist", "test", training=False, image_size=SIZE, batch_size=4,
            data_dir=tmp_path, download=False,
        )
        assert digits == [str(d) for d in range(10)]
        batches = _collect(test)
        assert [len(x) for x, _ in batches] == [4, 4, 2]
        images = batches[0][0]
        assert images.shape == (4, SIZE, SIZE, 3)
        np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_synthetic_dataset_is_deterministic_and_loadable(tmp_path):
    def write(name, seed):
        return write_synthetic_dataset(
            tmp_path / name, num_classes=3, images_per_class=5, image_size=32, seed=seed
        )

    classes = write("a", seed=7)
    write("b", seed=7)
    write("c", seed=8)
    assert classes == ["circle", "square", "triangle"]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 15
    def data(name, file):
        return (tmp_path / name / file).read_bytes()

    assert all(data("a", f) == data("b", f) for f in files)
    assert any(data("a", f) != data("c", f) for f in files)
    dataset, loaded = image_folder_dataset(
        tmp_path / "a", training=False, image_size=SIZE, batch_size=15
    )
    (images, labels), = _collect(dataset)
    assert loaded == classes and images.shape == (15, SIZE, SIZE, 3)
    np.testing.assert_array_equal(labels.sum(axis=0), [5, 5, 5])


def test_fast_randaugment_matches_keras_randaugment():
    images = tf.random.stateless_uniform((3, 16, 16, 3), seed=[1, 2], minval=0, maxval=255)
    stock = keras.layers.RandAugment(value_range=(0, 255), factor=0.9, seed=3)
    # Same equalize op on both sides, so only the op dispatch is compared.
    stock.equalization = BincountEqualization(value_range=(0, 255))
    fast = FastRandAugment(value_range=(0, 255), factor=0.9, seed=3, geometric_ranges="keras")

    def run(layer):
        dataset = tf.data.Dataset.from_tensor_slices(images).map(layer)
        return np.stack(list(dataset.as_numpy_iterator()))

    expected, actual = run(stock), run(fast)
    np.testing.assert_array_equal(actual, expected)
    assert np.abs(actual - images.numpy()).max() > 1  # it did augment


def test_fast_randaugment_geometric_ops_take_timms_ranges():
    images = np.zeros((400, 32, 32, 3), "float32")
    layer = FastRandAugment(value_range=(0, 255), factor=0.9, seed=3)

    def draws(sublayer, key):
        return np.asarray(sublayer.get_random_transformation(images)[key])

    angles = draws(layer.random_rotation, "angle")
    shifts = draws(layer.random_translation, "translations")
    shears = draws(layer.random_shear, "shear_factor")
    # Magnitude 9 of 10: +-27 degrees, +-0.27 shear, +-0.405 of the size, both directions.
    for values, limit in ((angles, 27.0), (shears, 0.27), (shifts / 32, 0.405)):
        assert np.abs(values).max() <= limit + 1e-6
        assert values.min() < -limit / 2 and values.max() > limit / 2

    stock = FastRandAugment(value_range=(0, 255), factor=0.9, seed=3, geometric_ranges="keras")
    stock_angles = draws(stock.random_rotation, "angle")
    assert stock_angles.min() >= 0 and stock_angles.max() > 90  # Keras' one-sided 0..324 degrees

    restored = FastRandAugment.from_config(layer.get_config())
    assert restored.geometric_ranges == "timm"
    assert restored.random_rotation.factor == layer.random_rotation.factor
    with pytest.raises(ValueError, match="geometric_ranges"):
        FastRandAugment(geometric_ranges="torchvision")


def test_bincount_equalization_matches_keras_equalization():
    images = np.random.default_rng(0).uniform(40, 200, (2, 8, 8, 3)).astype("float32")

    def run(layer):
        return next(tf.data.Dataset.from_tensors(images).map(layer).as_numpy_iterator())

    # Few bins keep Keras' loop-based JAX histogram quick to trace.
    expected = run(keras.layers.Equalization(bins=32))
    np.testing.assert_array_equal(run(BincountEqualization(bins=32)), expected)
    assert np.abs(expected - images).max() > 1


def test_augment_config_validation_and_image_size_rule(image_folder):
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="erasing_prob"):
        AugmentConfig(erasing_prob=1.5)
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        AugmentConfig(randaugment_magnitude=12)
    # The image_size argument wins over augment.image_size.
    config = dataclasses.replace(PLAIN, image_size=64)
    dataset, _ = image_folder_dataset(image_folder, training=False, image_size=24, augment=config)
    assert dataset.element_spec[0].shape.as_list() == [None, 24, 24, 3]
