"""Which Keras backend can export which format, and the error for the others.

| backend    | tf_saved_model              | onnx              | litert            |
| ---------- | --------------------------- | ----------------- | ----------------- |
| tensorflow | yes                         | yes (tf2onnx)     | yes (TF converter)|
| jax        | yes (jax2tf)                | no                | no                |
| torch      | only with torch_xla         | yes (torch.onnx)  | no                |

Model files and weights are the same on every backend, so an unsupported pair
is always solved by running the export under another `KERAS_BACKEND`.
"""

import importlib.util

import keras

FORMATS = ("tf_saved_model", "onnx", "litert")

# The (backend, format) pairs that export, with the packages each needs beyond
# the project's dependencies (module and pip names are the same).
_REQUIREMENTS = {
    ("tensorflow", "tf_saved_model"): (),
    ("tensorflow", "onnx"): ("tf2onnx", "onnx"),
    ("tensorflow", "litert"): (),
    ("jax", "tf_saved_model"): (),
    ("torch", "tf_saved_model"): ("torch_xla",),
    ("torch", "onnx"): ("onnx",),
}
# torch_xla is built for one torch version and for accelerators: never the advice.
_HARD_TO_INSTALL = {"torch_xla"}

_UNSUPPORTED_REASONS = {
    ("jax", "onnx"): (
        "Keras converts JAX functions to ONNX with jax2onnx, which pulls in flax, "
        "optax and orbax and is not supported here"
    ),
    ("jax", "litert"): "Keras has no LiteRT converter for JAX functions",
    ("torch", "litert"): (
        "Keras converts PyTorch models to LiteRT with litert-torch, which is not "
        "supported here"
    ),
}


class ExportNotSupportedError(RuntimeError):
    """A format that cannot be exported from the current Keras backend (or lacks a package)."""


def _other_backends(fmt, current):
    """Backends other than `current` that export `fmt` with ordinary pip packages."""
    return [
        backend
        for backend in ("tensorflow", "jax", "torch")
        if backend != current
        and (backend, fmt) in _REQUIREMENTS
        and not _HARD_TO_INSTALL & set(_REQUIREMENTS[(backend, fmt)])
    ]


def check_supported(fmt, backend=None):
    """Raises unless `fmt` can be exported under `backend` (default: the current one).

    Raises `ValueError` for an unknown format and `ExportNotSupportedError` when
    the backend cannot produce it or a package it needs is not installed; the
    message names the backend, the format and what to do.

    Example:
    >>> from hatnet_keras.export import check_supported
    >>> check_supported("tf_saved_model", "tensorflow")
    >>> check_supported("litert", "jax")
    Traceback (most recent call last):
    ...
    hatnet_keras.export.support.ExportNotSupportedError: Cannot export format='litert' ...
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}; got {fmt!r}.")
    backend = backend or keras.backend.backend()
    instead = (
        f"The model file and weights are backend-agnostic: run the export again with "
        f"KERAS_BACKEND set to one of {_other_backends(fmt, backend)}."
    )
    if (backend, fmt) not in _REQUIREMENTS:
        reason = _UNSUPPORTED_REASONS.get((backend, fmt), "this pair is not supported")
        raise ExportNotSupportedError(
            f"Cannot export format={fmt!r} with the {backend!r} Keras backend: {reason}. "
            f"{instead}"
        )
    missing = [
        package
        for package in _REQUIREMENTS[(backend, fmt)]
        if importlib.util.find_spec(package) is None
    ]
    if missing:
        raise ExportNotSupportedError(
            f"Exporting format={fmt!r} with the {backend!r} Keras backend needs "
            f"{' and '.join(missing)}, not installed here: `pip install {' '.join(missing)}`"
            f"{' (a build for your torch version)' if _HARD_TO_INSTALL & set(missing) else ''}. "
            f"{instead}"
        )


def supported_formats(backend=None):
    """The formats `backend` (default: the current one) can export, packages aside.

    Example:
    >>> from hatnet_keras.export import supported_formats
    >>> supported_formats("jax")
    ('tf_saved_model',)
    """
    backend = backend or keras.backend.backend()
    return tuple(fmt for fmt in FORMATS if (backend, fmt) in _REQUIREMENTS)
