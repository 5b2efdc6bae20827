"""hatnet_keras.visualize: attention maps, class activation maps and plots, on a reduced HAT-Net."""

import ast
from pathlib import Path

import numpy as np
import pytest

import keras

import hatnet_keras
from hatnet_keras import visualize
from hatnet_keras.training import with_softmax

ARCHITECTURE = dict(
    dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), head_dim=8, expansions=(2, 2, 2, 2),
    grid_sizes=(8, 7, 7, 1), pool_ratios=(8, 4, 2, 1), kernel_sizes=(3, 3, 3, 3),
)
CLASSES = 5
SIZE = 64  # stage maps 16, 8, 4, 2


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return hatnet_keras.HATNet(
        **ARCHITECTURE, classes=CLASSES, classifier_activation=None, input_shape=(SIZE, SIZE, 3)
    )


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


BLOCKS = ("stage1_block1", "stage2_block1", "stage3_block1", "stage4_block1")


@pytest.fixture(scope="module")
def scores(model, images):
    """Raw weights of every block: one program each (compiling costs seconds on JAX)."""
    return {
        block: visualize.attention_scores_model(model, block).predict(images, verbose=0)
        for block in BLOCKS
    }


@pytest.fixture(scope="module")
def reference(model, images):
    """The last stage's features and the logits, by a model made here, in one program."""
    outputs = {"features": model.get_layer("avg_pool").input, "logits": model.output}
    return keras.Model(model.input, outputs).predict(images, verbose=0)


def _figure(rows, cols):
    figure = pytest.importorskip("matplotlib.figure")
    return figure.Figure().subplots(rows, cols, squeeze=False)


def test_matplotlib_is_imported_only_inside_functions():
    tree = ast.parse(Path(visualize.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names]
    names += [node.module for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not any(name and name.startswith("matplotlib") for name in names)


@pytest.mark.parametrize(
    "block, size, grid, keys",
    [
        ("stage1_block1", (16, 16), 8, (2, 2)),
        ("stage2_block1", (8, 8), 7, (2, 2)),
        ("stage3_block1", (4, 4), 7, (2, 2)),
        ("stage4_block1", (2, 2), 1, (2, 2)),
    ],
)
def test_attention_maps_shapes_and_normalisation(model, images, scores, block, size, grid, keys):
    maps = visualize.attention_maps(model, images, block=block, scores=scores[block])
    heads = ARCHITECTURE["dims"][int(block[5]) - 1] // ARCHITECTURE["head_dim"]
    assert maps["feature_size"] == size
    assert maps["query"] == (size[0] // 2, size[1] // 2)
    assert maps["grid_size"] == grid
    assert maps["global"].shape == (2, heads, *keys)
    np.testing.assert_allclose(maps["global"].sum(axis=(2, 3)), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps["global_mean"].sum(axis=(2, 3)), 1.0, atol=1e-5)
    if grid == 1:
        assert maps["local"] is None and maps["pool_ratio"] == 1
        return
    local = maps["local"]
    assert local.shape == (2, heads, *size)
    np.testing.assert_allclose(local.sum(axis=(2, 3)), 1.0, atol=1e-5)
    # Nothing outside the query's window.
    row, col = maps["query"]
    outside = np.ones(size, bool)
    top, left = row // grid * grid, col // grid * grid
    outside[top : top + grid, left : left + grid] = False
    assert np.all(local[:, :, outside] == 0.0)


def test_attention_maps_pick_the_query_from_the_raw_weights(model, images, scores):
    # Stage 2: an 8 x 8 map in 7 x 7 windows, padded to 14 x 14; query (7, 3) is in
    # window (1, 0), token (0, 3), and sees only map row 7 of that window.
    raw = scores["stage2_block1"]
    maps = visualize.attention_maps(
        model, images, block="stage2_block1", query=(7, 3), scores=raw
    )
    window = raw["local"][:, 2, :, 3].reshape(2, 4, 7, 7)
    np.testing.assert_allclose(maps["local"][:, :, 7:, :7], window[:, :, :1, :7], atol=1e-6)
    assert np.all(maps["local"][:, :, :7] == 0.0) and np.all(maps["local"][:, :, :, 7:] == 0.0)
    np.testing.assert_allclose(maps["global"], raw["global"][:, :, 7 * 8 + 3].reshape(2, 4, 2, 2), atol=1e-6)
    np.testing.assert_allclose(maps["global_mean"], raw["global"].mean(axis=2).reshape(2, 4, 2, 2), atol=1e-6)


def test_attention_maps_of_the_global_stage(model, images, scores):
    maps = visualize.attention_maps(
        model, images, block="stage4_block1", query=(1, 0), scores=scores["stage4_block1"]
    )
    raw = scores["stage4_block1"]["global"]  # (batch, heads, 4 positions, 4 positions)
    np.testing.assert_allclose(maps["global"], raw[:, :, 2].reshape(2, 8, 2, 2), atol=1e-6)


def test_submodels_are_made_once_per_model(model):
    assert visualize.attention_scores_model(model, "stage1_block1") is (
        visualize.attention_scores_model(model, "stage1_block1")
    )
    assert visualize.attention_scores_model(model, "stage2_block1") is not (
        visualize.attention_scores_model(model, "stage1_block1")
    )


def test_attention_maps_run_the_model_when_given_no_scores(model, images, scores):
    maps = visualize.attention_maps(model, images, block="stage3_block1", query=(1, 2))
    again = visualize.attention_maps(
        model, images, block="stage3_block1", query=(1, 2), scores=scores["stage3_block1"]
    )
    for key in ("local", "global", "global_mean"):
        np.testing.assert_allclose(maps[key], again[key], atol=1e-6)


def test_attention_maps_of_a_free_size_model_follow_the_image(model):
    free = hatnet_keras.HATNet(**ARCHITECTURE, classes=CLASSES, input_shape=(None, None, 3))
    free.set_weights(model.get_weights())
    pixels = np.random.default_rng(1).uniform(0, 255, (1, 72, 40, 3)).astype("float32")
    maps = visualize.attention_maps(free, pixels, block="stage1_block1")
    assert maps["feature_size"] == (18, 10)
    assert maps["local"].shape == (1, 2, 18, 10)
    assert maps["global"].shape == (1, 2, 3, 2)  # ceil(18 / 8) x ceil(10 / 8)
    np.testing.assert_allclose(maps["local"].sum(axis=(2, 3)), 1.0, atol=1e-5)


def test_attention_maps_refuse_bad_blocks_and_queries(model, images, scores):
    with pytest.raises(ValueError, match="no HAT-Net block 'predictions'.*stage1_block1"):
        visualize.attention_maps(model, images, block="predictions")
    with pytest.raises(ValueError, match="outside the 16x16 feature map"):
        visualize.attention_maps(
            model, images, block="stage1_block1", query=(16, 0), scores=scores["stage1_block1"]
        )


def test_class_activation_map_is_the_head_applied_to_every_position(model, images, reference):
    cams, classes, logits = visualize.class_activation_map(model, images)
    head = model.get_layer("predictions")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (head.kernel, head.bias))
    manual = np.einsum("bhwc,ck->bhwk", reference["features"], kernel) + bias
    model_logits = reference["logits"]

    assert cams.shape == (2, 2, 2)  # stride 32 on 64 pixels
    np.testing.assert_array_equal(classes, model_logits.argmax(axis=-1))
    np.testing.assert_allclose(cams, manual[np.arange(2), :, :, classes], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, model_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cams.mean(axis=(1, 2)), logits[np.arange(2), classes], atol=1e-5)


def test_class_activation_map_of_chosen_classes_and_a_softmax_model(model, images):
    softmax_model = with_softmax(model)
    probabilities = softmax_model.predict(images, verbose=0)
    cams, classes, logits = visualize.class_activation_map(softmax_model, images, class_index=[3, 1])
    np.testing.assert_array_equal(classes, [3, 1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(logits)), probabilities, atol=1e-5)
    np.testing.assert_allclose(cams.mean(axis=(1, 2)), logits[[0, 1], [3, 1]], atol=1e-5)
    _, same, _ = visualize.class_activation_map(softmax_model, images, class_index=4)
    np.testing.assert_array_equal(same, [4, 4])


def test_class_activation_map_needs_the_head(model):
    backbone = keras.Model(model.input, model.get_layer("stage4_block1").output)
    with pytest.raises(ValueError, match="include_top=True"):
        visualize.class_activation_map(backbone, np.zeros((1, SIZE, SIZE, 3)))


def test_upsample_is_nearest_neighbour_per_cell():
    maps = np.arange(6.0).reshape(1, 2, 3)
    up = visualize.upsample(maps, (4, 6))
    assert up.shape == (1, 4, 6)
    np.testing.assert_array_equal(up[0, :2], [[0, 0, 1, 1, 2, 2]] * 2)
    np.testing.assert_array_equal(up[0, 2:], [[3, 3, 4, 4, 5, 5]] * 2)
    odd = visualize.upsample(np.arange(4.0).reshape(2, 2), (5, 3))
    np.testing.assert_array_equal(odd[:, 0], [0, 0, 0, 2, 2])


def test_show_images_titles_predictions_green_when_right_red_when_wrong():
    axes = _figure(1, 3)
    pixels = np.full((2, 8, 8, 3), 100.0)
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])
    visualize.show_images(axes, pixels, np.array([[1, 0], [0, 1]]), ["a", "b"], probabilities)
    first, second, spare = axes.ravel()
    assert first.get_title() == "a 90%\n(true: a)" and first.title.get_color() == "green"
    assert second.get_title() == "a 80%\n(true: b)" and second.title.get_color() == "red"
    assert len(first.images) == 1 and not spare.images and not spare.axison
    visualize.show_images(axes, pixels, [1, 0], ["a", "b"])
    assert first.get_title() == "b"


def test_plot_history_draws_training_and_validation_curves():
    axes = _figure(1, 2)[0]
    logs = {"loss": [2.0, 1.0, 0.5], "val_loss": [2.1, 1.2, 0.7], "accuracy": [0.3, 0.6, 0.9]}
    visualize.plot_history(logs, axes)
    loss_lines, accuracy_lines = axes[0].get_lines(), axes[1].get_lines()
    assert [line.get_label() for line in loss_lines] == ["training", "validation"]
    np.testing.assert_array_equal(loss_lines[1].get_ydata(), [2.1, 1.2, 0.7])
    np.testing.assert_array_equal(accuracy_lines[0].get_xdata(), [1, 2, 3])
    assert len(accuracy_lines) == 1  # no val_accuracy logged


def test_plot_attention_and_class_activation_maps(model, images, scores):
    axes = _figure(2, 4)
    maps = visualize.attention_maps(model, images, block="stage1_block1", scores=scores["stage1_block1"])
    visualize.plot_attention_maps(axes[0, :3], images[1], maps, index=1)
    local_image = axes[0, 1].images[1].get_array()
    np.testing.assert_allclose(local_image, maps["local"][1].mean(axis=0), atol=1e-6)
    assert axes[0, 1].images[1].get_extent() == [0, SIZE, SIZE, 0]
    marker = axes[0, 0].get_lines()[0]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (34.0, 34.0)  # cell (8, 8) at stride 4
    visualize.plot_attention_maps(axes[1, :3], images[0], maps, head=1)
    np.testing.assert_allclose(axes[1, 2].images[1].get_array(), maps["global"][0, 1], atol=1e-6)

    global_maps = visualize.attention_maps(
        model, images, block="stage4_block1", scores=scores["stage4_block1"]
    )
    row = _figure(1, 3)[0]
    visualize.plot_attention_maps(row, images[0], global_maps)
    assert not row[1].images and "G = 1" in row[1].get_title()

    cams, _, _ = visualize.class_activation_map(model, images)
    visualize.plot_class_activation_map(axes[0, 3], images[0], cams[0], "CAM")
    overlay = axes[0, 3].images[1]
    limit = np.abs(cams[0]).max()
    assert overlay.get_clim() == pytest.approx((-limit, limit))
    assert axes[0, 3].get_title() == "CAM"
