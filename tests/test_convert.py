"""Checkpoint conversion: parity with the PyTorch reference, key accounting, errors, CLI."""

import json

import numpy as np
import pytest
import torch

import keras

import hatnet_keras
from hatnet_keras.cli import convert_weights
from hatnet_keras.weights import (
    CheckpointMismatchError,
    convert_state_dict,
    keras_target,
    plan_conversion,
    read_state_dict,
)
from conftest import build_reduced, forward, reduced_architecture

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def state_dict(reduced_checkpoint):
    return read_state_dict(reduced_checkpoint)


@pytest.fixture(scope="module")
def converted(state_dict):
    model = build_reduced(
        input_shape=(None, None, 3), include_preprocessing=False, classifier_activation=None
    )
    report = convert_state_dict(model, state_dict)
    return model, report


@pytest.mark.parametrize("size", [224, 448])
def test_logits_and_stage_outputs_match_the_reference(converted, reference_io, size):
    model, _ = converted
    features = keras.Model(model.input, {**hatnet_keras.pyramid_outputs(model), "logits": model.output})
    outputs = forward(features, reference_io[f"input_{size}"])
    errors = {"logits": np.abs(outputs["logits"] - reference_io[f"logits_{size}"]).max()}
    for stage in range(1, 5):
        expected = reference_io[f"stage{stage}_{size}"]
        assert outputs[f"P{stage + 1}"].shape == expected.shape
        errors[f"stage{stage}"] = np.abs(outputs[f"P{stage + 1}"] - expected).max()
    print(f"\n[{keras.backend.backend()}] max abs error at {size}: {errors}")
    assert max(errors.values()) < TOLERANCE, errors


def test_every_key_is_mapped_or_skipped_on_purpose(converted, state_dict):
    model, report = converted
    assert set(report.mapped) | set(report.skipped) == set(state_dict)
    assert set(report.skipped) == {k for k in state_dict if ".attn.proj_norm." in k}
    assert set(report.skipped.values()) == {"unused proj_norm"}
    assert sorted(report.mapped.values()) == sorted(v.path for v in model.weights)
    assert "10 skipped" in report.summary()


def test_mapping_is_by_name():
    assert keras_target("patch_embed.3.weight")[0] == "stem/conv2/kernel"
    assert keras_target("ds3.norm.bias")[0] == "downsample3/norm/beta"
    assert keras_target("blocks.2.1.attn.kv.weight")[0] == "stage3_block2/attn/merge/kv/kernel"
    assert keras_target("blocks.0.0.conv.conv2.0.weight")[0] == "stage1_block1/ffn/depthwise/kernel"
    assert keras_target("classifier.1.weight")[0] == "predictions/kernel"
    assert keras_target("blocks.0.0.attn.proj_norm.weight") is None
    assert keras_target("head.fc.weight") is None


def test_layouts_are_converted(converted, state_dict):
    model, _ = converted
    by_path = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    np.testing.assert_array_equal(
        by_path["stem/conv1/kernel"], state_dict["patch_embed.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        by_path["stage1_block1/attn/qkv/kernel"], state_dict["blocks.0.0.attn.qkv.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(
        by_path["stage2_block1/ffn/depthwise/kernel"],
        state_dict["blocks.1.0.conv.conv2.0.weight"].transpose(2, 3, 0, 1),
    )
    np.testing.assert_array_equal(by_path["predictions/kernel"], state_dict["classifier.1.weight"].T)


@pytest.mark.parametrize("wrap", ["plain", "model", "module_prefix"])
def test_checkpoint_wrappings_are_read(tmp_path, reduced_checkpoint, state_dict, wrap):
    tensors = torch.load(reduced_checkpoint, map_location="cpu", weights_only=True)
    if wrap == "model":
        tensors = {"model": tensors, "epoch": 300}
    elif wrap == "module_prefix":
        tensors = {f"module.{key}": value for key, value in tensors.items()}
    path = tmp_path / "checkpoint.pth"
    torch.save(tensors, path)
    read = read_state_dict(path)
    assert sorted(read) == sorted(state_dict)
    np.testing.assert_array_equal(read["ds4.conv.weight"], state_dict["ds4.conv.weight"])


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="Could not read"):
        read_state_dict(path)


def test_a_wrong_checkpoint_names_every_problem_and_loads_nothing(state_dict):
    model = build_reduced(input_shape=(64, 64, 3))
    before = [w.copy() for w in model.get_weights()]
    broken = dict(state_dict)
    del broken["blocks.2.1.attn.q.bias"]
    broken["blocks.9.0.attn.qkv.weight"] = np.zeros((3, 3, 1, 1), "float32")
    broken["ds3.conv.weight"] = np.zeros((48, 16, 3, 3), "float32")
    with pytest.raises(CheckpointMismatchError) as caught:
        convert_state_dict(model, broken)
    error = caught.value
    assert error.missing == ["stage3_block2/attn/q/bias"]
    assert error.unexpected == ["blocks.9.0.attn.qkv.weight"]
    assert [entry[0] for entry in error.mismatched] == ["ds3.conv.weight"]
    message = str(error)
    for name in ("stage3_block2/attn/q/bias", "blocks.9.0.attn.qkv.weight", "ds3.conv.weight"):
        assert name in message
    assert "no weight was loaded" in message
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_a_head_of_another_size_is_a_shape_error(state_dict):
    model = build_reduced(input_shape=(64, 64, 3), classes=5)
    with pytest.raises(CheckpointMismatchError, match="classifier.1.weight"):
        convert_state_dict(model, state_dict)


def test_headless_model_skips_the_classifier_on_purpose(state_dict):
    model = build_reduced(include_top=False)
    _, report = plan_conversion(model, state_dict)
    assert report.skipped["classifier.1.weight"] == "model has no classification head"


def test_weights_argument_takes_pth_and_keras_weights(tmp_path, reduced_checkpoint, converted, reference_io):
    from_pth = build_reduced(
        weights=str(reduced_checkpoint),
        input_shape=(None, None, 3),
        include_preprocessing=False,
        classifier_activation=None,
    )
    reference_model, _ = converted
    for a, b in zip(from_pth.get_weights(), reference_model.get_weights()):
        np.testing.assert_array_equal(a, b)

    output = tmp_path / "reduced.weights.h5"
    config = tmp_path / "reduced.json"
    config.write_text(json.dumps(reduced_architecture()))
    code = convert_weights.main(
        ["--config", str(config), "--checkpoint", str(reduced_checkpoint), "--output", str(output)]
    )
    assert code == 0 and output.exists()
    from_h5 = build_reduced(weights=str(output), input_shape=(None, None, 3))
    for a, b in zip(from_h5.get_weights(), reference_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cli_reports_a_mismatched_checkpoint(tmp_path, reduced_checkpoint, capsys):
    architecture = dict(reduced_architecture(), dims=[16, 32, 48, 72])
    config = tmp_path / "wider.json"
    config.write_text(json.dumps(architecture))
    output = tmp_path / "wider.weights.h5"
    code = convert_weights.main(
        ["--config", str(config), "--checkpoint", str(reduced_checkpoint), "--output", str(output)]
    )
    assert code == 1
    assert not output.exists()
    error = capsys.readouterr().err
    assert "Mis-shaped" in error and "ds4.conv.weight" in error


def test_architecture_config_files_are_read_and_checked(tmp_path):
    from hatnet_keras.cli.architecture import VARIANT_NAMES, read_architecture_config

    assert VARIANT_NAMES == tuple(hatnet_keras.VARIANTS)

    reference_style = dict(reduced_architecture(), num_classes=7)
    reference_style["ds_ratios"] = reference_style.pop("pool_ratios")
    path = tmp_path / "reference_style.json"
    path.write_text(json.dumps(reference_style))
    architecture, classes = read_architecture_config(str(path))
    assert architecture == reduced_architecture() and classes == 7

    incomplete = dict(reduced_architecture(), mlp_ratios=[4, 4, 4, 4])
    del incomplete["head_dim"]
    path = tmp_path / "incomplete.json"
    path.write_text(json.dumps(incomplete))
    with pytest.raises(SystemExit, match=r"incomplete\.json.*missing \['head_dim'\].*unknown \['mlp_ratios'\]"):
        read_architecture_config(str(path))

    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(SystemExit, match=r"broken\.json: cannot read"):
        read_architecture_config(str(path))
