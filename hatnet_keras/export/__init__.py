"""Export HAT-Net models for serving: TensorFlow SavedModel, ONNX and LiteRT.

Every export starts from a float32 copy of the model (`inference_model`), so a
model trained in mixed precision serves in float32. The artifacts need neither
`hatnet_keras` nor Keras to run. Which backend exports which format is in
`hatnet_keras.export.support`.
"""

from hatnet_keras.export.litert import export_litert
from hatnet_keras.export.onnx import export_onnx
from hatnet_keras.export.precision import inference_model
from hatnet_keras.export.saved_model import (
    SERVE,
    SERVE_BYTES,
    export_saved_model,
    saved_model_archive,
    serving_input_spec,
)
from hatnet_keras.export.support import (
    FORMATS,
    ExportNotSupportedError,
    check_supported,
    supported_formats,
)

_SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}


def export_model(model, path, format="tf_saved_model", image_size=224, verbose=False, **kwargs):
    """Exports a HAT-Net model in `format`, as a float32 copy with the same weights.

    Args:
        model: a model built by `hatnet_keras` (any dtype policy, any input size).
        path: a directory for "tf_saved_model", a `.onnx` file for "onnx", a
            `.tflite` file for "litert".
        format: "tf_saved_model" (signatures `serve` on float32 pixels and
            `serve_bytes` on encoded images), "onnx" or "litert".
        image_size: the side `serve_bytes` resizes and crops to, and the fixed
            input size where a backend cannot export free height and width.
        verbose: print the exporter's messages.
        **kwargs: passed to the format's exporter: `opset` for "onnx",
            `select_tf_ops` for "litert".

    Raises:
        ExportNotSupportedError: the current Keras backend cannot export
            `format`, or a package it needs is missing.

    Example:

    ```python
    model = hatnet_keras.HATNetTiny(weights="imagenet")
    export_model(model, "exported/hatnet_tiny")
    export_model(model, "hatnet_tiny.onnx", format="onnx")
    ```
    """
    check_supported(format)
    path = str(path)
    suffix = _SUFFIXES.get(format)
    if suffix and not path.endswith(suffix):
        raise ValueError(f"format={format!r} writes a {suffix} file; got path={path!r}.")
    model = inference_model(model)
    if format == "tf_saved_model":
        export_saved_model(model, path, image_size=image_size, verbose=verbose, **kwargs)
    elif format == "onnx":
        export_onnx(model, path, image_size=image_size, verbose=verbose, **kwargs)
    else:
        export_litert(model, path, image_size=image_size, verbose=verbose, **kwargs)


__all__ = [
    "FORMATS",
    "SERVE",
    "SERVE_BYTES",
    "ExportNotSupportedError",
    "check_supported",
    "export_litert",
    "export_model",
    "export_onnx",
    "export_saved_model",
    "inference_model",
    "saved_model_archive",
    "serving_input_spec",
    "supported_formats",
]
