"""The four official variants at full size: parameter counts, checkpoint key coverage, and
the weights="imagenet" download path against a local HTTP server."""

import functools
import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
import torch

import keras

import hatnet_keras
from hatnet_keras.weights import hub, plan_conversion
from conftest import reference_path

# The reference's parameter counts without the unused proj_norm.
EXPECTED_PARAMETERS = {
    "tiny": 12_650_152,
    "small": 25_738_568,
    "medium": 42_925_960,
    "large": 63_108_936,
}
BUILDERS = {
    "tiny": hatnet_keras.HATNetTiny,
    "small": hatnet_keras.HATNetSmall,
    "medium": hatnet_keras.HATNetMedium,
    "large": hatnet_keras.HATNetLarge,
}


@pytest.fixture(scope="module")
def manifests():
    return json.loads(reference_path("official_state_dict_shapes.json").read_text())


def _zeros_like_manifest(manifest):
    # Read-only zero views: a full-size state dict without allocating it.
    return {key: np.broadcast_to(np.float32(0), shape) for key, shape in _shapes(manifest).items()}


def _shapes(manifest):
    return {key: tuple(shape) for key, shape in manifest["state_dict"].items()}


@pytest.mark.parametrize("variant", sorted(EXPECTED_PARAMETERS))
def test_variant_matches_the_official_checkpoint(variant, manifests):
    model = BUILDERS[variant](input_shape=(None, None, 3))
    assert model.name == f"hatnet_{variant}"
    assert model.count_params() == EXPECTED_PARAMETERS[variant]

    manifest = manifests[variant]
    state_dict = _zeros_like_manifest(manifest)
    _, report = plan_conversion(model, state_dict)
    assert set(report.mapped) | set(report.skipped) == set(state_dict)
    assert all(".attn.proj_norm." in key for key in report.skipped)
    assert len(report.mapped) == len(model.weights)
    skipped_parameters = sum(int(np.prod(state_dict[key].shape)) for key in report.skipped)
    assert manifest["num_params"] - skipped_parameters == EXPECTED_PARAMETERS[variant]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def release_server(tmp_path, manifests):
    """Serves a Tiny checkpoint made here, at 127.0.0.1, under the release file name."""
    served = tmp_path / "release"
    served.mkdir()
    rng = np.random.default_rng(0)
    tensors = {
        key: torch.from_numpy(rng.normal(size=shape).astype("float32"))
        for key, shape in _shapes(manifests["tiny"]).items()
    }
    checkpoint = served / hub.CHECKPOINT_FILES["tiny"]
    torch.save({"model": tensors}, checkpoint)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {
        "url": f"http://127.0.0.1:{server.server_address[1]}",
        "tensors": tensors,
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
    }
    server.shutdown()
    server.server_close()


def test_imagenet_weights_download_convert_and_cache(release_server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(hub.URL_ENV, release_server["url"])
    monkeypatch.setenv(hub.CACHE_ENV, str(cache))
    monkeypatch.setitem(hub.CHECKPOINT_SHA256, "tiny", release_server["sha256"])

    model = hatnet_keras.HATNetTiny(weights="imagenet")
    tensors = release_server["tensors"]
    by_path = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    np.testing.assert_array_equal(
        by_path["stage3_block6/attn/qkv/kernel"],
        tensors["blocks.2.5.attn.qkv.weight"].numpy()[:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(by_path["predictions/bias"], tensors["classifier.1.bias"].numpy())
    assert (cache / "hatnet_tiny_imagenet.weights.h5").exists()

    # Converted once: a headless model now loads from the cache with no server at all.
    monkeypatch.setenv(hub.URL_ENV, "http://127.0.0.1:9")
    backbone = hatnet_keras.HATNetTiny(weights="imagenet", include_top=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("stem").weights[0]),
        tensors["patch_embed.0.weight"].numpy().transpose(2, 3, 1, 0),
    )


def test_imagenet_download_with_a_wrong_hash_is_rejected(release_server, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.URL_ENV, release_server["url"])
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(hub.CHECKPOINT_SHA256, "tiny", "0" * 64)
    with pytest.raises(ValueError, match="(?i)hash"):
        hatnet_keras.HATNetTiny(weights="imagenet")
    assert not (tmp_path / "cache" / "hatnet_tiny_imagenet.weights.h5").exists()


def test_imagenet_needs_an_official_variant():
    with pytest.raises(ValueError, match="official variants"):
        hatnet_keras.HATNet(
            dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), head_dim=8, expansions=(2, 2, 2, 2),
            grid_sizes=(8, 7, 7, 1), pool_ratios=(8, 4, 2, 1), kernel_sizes=(3, 3, 3, 3),
            weights="imagenet",
        )
