"""Shared fixtures: the reference fixtures of ../shared/reference and a reduced HAT-Net."""

import json
import os

# JAX compiles every eager op separately on CPU; the suite compiles hundreds of small
# programs once each, where LLVM's optimisation costs more than it ever saves.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
from pathlib import Path

import numpy as np
import pytest

import keras

import hatnet_keras

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def reference_path(name):
    path = REFERENCE_DIR / name
    if not path.exists():
        pytest.fail(f"Reference fixture {path} is missing (expected in ../shared/reference).")
    return path


def reduced_architecture():
    """The reduced reference config, in hatnet_keras.HATNet's argument names."""
    config = json.loads(reference_path("reduced_hatnet_config.json").read_text())
    return {
        "dims": config["dims"],
        "depths": config["depths"],
        "head_dim": config["head_dim"],
        "expansions": config["expansions"],
        "grid_sizes": config["grid_sizes"],
        "pool_ratios": config["ds_ratios"],
        "kernel_sizes": config["kernel_sizes"],
    }


# For tests of plain PyTorch code (the benchmark's baseline), which runs the same
# whatever KERAS_BACKEND is: they run once, in the torch backend's run of the suite.
once_for_all_backends = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="plain PyTorch, the same under every Keras backend: run in the torch run only",
)


def build_reduced(**kwargs):
    """A reduced HAT-Net (10 classes by default); keyword arguments go to HATNet."""
    kwargs.setdefault("classes", 10)
    return hatnet_keras.HATNet(**reduced_architecture(), **kwargs)


@pytest.fixture(scope="session")
def reference_io():
    with np.load(reference_path("reduced_hatnet_io.npz")) as data:
        return dict(data)


@pytest.fixture(scope="session")
def reduced_checkpoint():
    return reference_path("reduced_hatnet.pth")


def forward(model, inputs):
    """Runs `model` on a batch and returns numpy: compiled as one program on JAX, whose
    op-by-op eager mode compiles each operation separately, and eagerly elsewhere."""
    if keras.backend.backend() == "jax":
        outputs = model.predict_on_batch(inputs)
    else:
        outputs = model(inputs)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)
