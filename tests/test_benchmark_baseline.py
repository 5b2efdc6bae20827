"""The benchmark's baseline, scripts/baseline/hatnet_torch_reference.py, is the reference model.

Plain PyTorch, no Keras: it runs the same under every KERAS_BACKEND, so these tests
run in the torch backend's run of the suite only.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import once_for_all_backends, reference_path  # noqa: E402

pytestmark = once_for_all_backends

BASELINE = Path(__file__).resolve().parents[1] / "scripts" / "baseline" / "hatnet_torch_reference.py"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("hatnet_torch_reference", BASELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reduced_model(reference):
    config = json.loads(reference_path("reduced_hatnet_config.json").read_text())
    model = reference.HATNet(**config).eval()
    state = reference.load_checkpoint(reference_path("reduced_hatnet.pth"))
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("size", [224, 448])
def test_reduced_checkpoint_reproduces_reference_outputs(reduced_model, reference_io, size):
    images = torch.from_numpy(reference_io[f"input_{size}"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits, stages = reduced_model.forward_stages(images)
    np.testing.assert_allclose(logits.numpy(), reference_io[f"logits_{size}"], atol=1e-4, rtol=1e-4)
    for index, stage in enumerate(stages, start=1):
        np.testing.assert_allclose(
            stage.permute(0, 2, 3, 1).numpy(),
            reference_io[f"stage{index}_{size}"],
            atol=1e-4,
            rtol=1e-4,
            err_msg=f"stage {index} at {size}",
        )


@pytest.mark.parametrize("variant", ["tiny", "small", "medium", "large"])
def test_official_variant_state_dict_matches_reference(reference, variant):
    expected = json.loads(reference_path("official_state_dict_shapes.json").read_text())[variant]
    model = reference.build(variant)
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert set(shapes) == set(expected["state_dict"])
    assert shapes == expected["state_dict"]
    assert reference.count_parameters(model) == expected["num_params"]


def test_checkpoint_wrapping_is_removed(reference):
    state = {"patch_embed.0.bias": torch.zeros(16)}
    wrapped = {"model": {f"module.{key}": value for key, value in state.items()}, "epoch": 3}
    assert list(reference.unwrap_state_dict(wrapped)) == ["patch_embed.0.bias"]
    assert list(reference.unwrap_state_dict(state)) == ["patch_embed.0.bias"]


def test_training_mode_runs_backward(reference):
    model = reference.HATNet(
        dims=(16, 32, 48, 64), head_dim=8, expansions=(2, 2, 2, 2), grid_sizes=(8, 7, 7, 1),
        ds_ratios=(8, 4, 2, 1), depths=(1, 1, 1, 1), kernel_sizes=(3, 3, 3, 3), num_classes=5,
        drop_path_rate=0.1,
    ).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 224, 224)), torch.tensor([1, 3]))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "proj_norm" not in n)
