"""hatnet-demo --fast: the offline demo runs end to end and leaves a usable model."""

import os

import numpy as np

from hatnet_keras.cli import demo


def test_fast_demo_trains_saves_and_classifies_new_images(tmp_path, capsys):
    summary = demo.run_demo(str(tmp_path), fast=True, verbose=0)
    printed = capsys.readouterr().out

    assert os.path.isfile(summary["model_path"])
    assert summary["model_path"] == str(tmp_path / "model.keras")
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    assert f"validation accuracy {100 * summary['val_accuracy']:.1f}%" in printed

    # The reloaded model classified every newly drawn image, once, with probabilities.
    class_names = ["circle", "cross", "square", "triangle"]
    predictions = summary["predictions"]
    assert sorted(os.path.relpath(path, tmp_path / "new_images") for path, *_ in predictions) == [
        f"{name}/{name}_{index:04d}.png"
        for name in class_names
        for index in range(demo.NEW_IMAGES_PER_CLASS)
    ]
    for path, truth, predicted, probabilities in predictions:
        assert truth == os.path.basename(os.path.dirname(path))
        assert predicted == class_names[int(np.argmax(probabilities))]
        assert abs(sum(probabilities) - 1.0) < 1e-4
        assert f"-> {predicted}" in printed
