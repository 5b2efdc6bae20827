"""Measure each export format against the Keras model: largest difference and size.

Exports every format the current Keras backend supports, runs the artifact in
its own runtime (TensorFlow for the SavedModel, onnxruntime, the LiteRT
interpreter) on the same random images as the Keras model, and prints one row
per model and format: max |exported - keras| over the logits (the models are
built with `classifier_activation=None`, a stricter comparison than
probabilities), the size on disk and the export time. The reduced model gets
the reference checkpoint's weights when it lies beside its config; the
variants are randomly initialised.

    KERAS_BACKEND=tensorflow python scripts/measure_export.py
    KERAS_BACKEND=jax python scripts/measure_export.py --models tiny --image-size 224
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REDUCED_CONFIG = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "reduced_hatnet_config.json"
)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["reduced", "tiny"], help="'reduced' and/or variants"
    )
    parser.add_argument("--reduced-config", default=str(REDUCED_CONFIG))
    parser.add_argument("--formats", nargs="+", help="default: all the backend supports")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--select-tf-ops", action="store_true", help="litert: allow TensorFlow ops"
    )
    return parser


def build(name, reduced_config):
    import hatnet_keras
    from hatnet_keras.cli.export import _read_config

    common = {"input_shape": (None, None, 3), "classifier_activation": None}
    if name == "reduced":
        architecture, classes = _read_config(reduced_config)
        checkpoint = Path(reduced_config).with_name("reduced_hatnet.pth")
        weights = str(checkpoint) if checkpoint.exists() else None
        return hatnet_keras.HATNet(
            **architecture, classes=classes, weights=weights, name="reduced", **common
        )
    return hatnet_keras.HATNet(**hatnet_keras.VARIANTS[name], name=f"hatnet_{name}", **common)


def run_saved_model(path, images):
    import tensorflow as tf

    reloaded = tf.saved_model.load(path)  # kept: its variables die with it
    return reloaded.serve(tf.constant(images)).numpy()


def run_onnx(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(path)
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def run_litert(path, images):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter
    interpreter = Interpreter(model_path=path)
    (details,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(details["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(details["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


RUNNERS = {"tf_saved_model": run_saved_model, "onnx": run_onnx, "litert": run_litert}
FILE_NAMES = {"tf_saved_model": "saved_model", "onnx": "model.onnx", "litert": "model.tflite"}


def size_on_disk(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def measure(model, fmt, images, folder, select_tf_ops):
    """(max abs difference, size in bytes, export seconds) of one export, or an error string."""
    import keras

    from hatnet_keras.export import ExportNotSupportedError, export_model

    path = os.path.join(folder, f"{model.name}_{FILE_NAMES[fmt]}")
    options = {"select_tf_ops": True} if fmt == "litert" and select_tf_ops else {}
    start = time.perf_counter()
    try:
        export_model(model, path, format=fmt, image_size=images.shape[1], **options)
    except ExportNotSupportedError as error:
        return f"not exported: {str(error).splitlines()[0][:120]}"
    seconds = time.perf_counter() - start
    size = size_on_disk(path)
    expected = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    try:
        exported = RUNNERS[fmt](path, images)
    except RuntimeError as error:
        return f"exported ({size / 2**20:.2f} MiB) but did not run: {str(error)[:120]}"
    return float(np.max(np.abs(exported - expected))), size, seconds


def main(argv=None):
    args = build_parser().parse_args(argv)
    import keras

    from hatnet_keras.export import supported_formats

    backend = keras.backend.backend()
    formats = args.formats or supported_formats()
    shape = (args.batch, args.image_size, args.image_size, 3)
    images = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            model = build(name, args.reduced_config)
            for fmt in formats:
                rows.append((name, fmt, measure(model, fmt, images, folder, args.select_tf_ops)))
    print(f"\nbackend={backend}, images {shape} uniform in [0, 255], outputs: logits")
    print(f"| model | format | max abs diff vs Keras | size (MiB) | export (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, fmt, result in rows:
        if isinstance(result, str):
            print(f"| {name} | {fmt} | {result} | | |")
        else:
            diff, size, seconds = result
            print(f"| {name} | {fmt} | {diff:.2e} | {size / 2**20:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
