"""The offline TFDS dataset `hatnet_shapes` and `holdout_splits`."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from hatnet_keras.data import SHAPES, holdout_splits, tfds_dataset  # noqa: E402
from hatnet_keras.data.shapes_tfds import HatnetShapes  # noqa: E402


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tensorflow_datasets")
    builder = tfds.builder("hatnet_shapes/mini", data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder, data_dir


def _examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)))


def test_builder_is_registered_with_its_configs():
    assert "hatnet_shapes" in tfds.list_builders()
    assert [config.name for config in HatnetShapes.BUILDER_CONFIGS] == ["standard", "mini"]
    assert HatnetShapes.DEFAULT_CONFIG_NAME == "standard"


def test_mini_splits_images_and_labels(mini):
    builder, _ = mini
    names = builder.info.features["label"].names
    assert names == sorted(SHAPES)
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        "train": 48,
        "test": 24,
    }
    for split, per_class in (("train", 8), ("test", 4)):
        examples = _examples(builder, split)
        assert len(examples) == 6 * per_class
        for image, label in examples:
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            assert image.std() > 10  # a drawing, not a blank
        counts = np.bincount([label for _, label in examples], minlength=6)
        np.testing.assert_array_equal(counts, [per_class] * 6)


def test_train_and_test_images_differ(mini):
    builder, _ = mini
    train = {image.tobytes() for image, _ in _examples(builder, "train")}
    test = {image.tobytes() for image, _ in _examples(builder, "test")}
    assert len(train) == 48 and len(test) == 24 and not train & test


def test_generation_is_deterministic(mini):
    builder, _ = mini
    first = list(builder._generate_examples("train", 2))
    second = list(builder._generate_examples("train", 2))
    assert [key for key, _ in first] == [key for key, _ in second]
    assert len(first) == 12
    for (key, a), (_, b) in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["label"] == b["label"]
        assert key.rsplit("_", 1)[0] == sorted(SHAPES)[a["label"]]  # "<shape>_<index>"


def test_tfds_dataset_reads_it_by_name(mini):
    _, data_dir = mini
    dataset, classes = tfds_dataset(
        "hatnet_shapes/mini", "test", training=False, image_size=32, batch_size=16,
        data_dir=str(data_dir), download=False,
    )
    images, labels = next(iter(dataset))
    assert classes == sorted(SHAPES)
    assert images.shape == (16, 32, 32, 3) and labels.shape == (16, 6)
    np.testing.assert_allclose(labels.numpy().sum(axis=1), 1.0)


def test_holdout_splits():
    assert holdout_splits(["train", "test"]) == ("train", "test")
    assert holdout_splits(["test", "validation", "train"]) == ("train", "validation")
    assert holdout_splits(["train"]) == ("train[:90%]", "train[90%:]")
    assert holdout_splits({"train": None}, holdout=0.25) == ("train[:75%]", "train[75%:]")
    with pytest.raises(ValueError, match="No 'train' split"):
        holdout_splits(["test"])
    with pytest.raises(ValueError, match="holdout"):
        holdout_splits(["train"], holdout=1.0)
