"""Export (hatnet-export): SavedModel, ONNX and LiteRT against the Keras model, on every backend.

The exported files are checked where they are meant to run: the SavedModel in a
fresh Python process that never imports Keras or hatnet_keras, the ONNX file in
onnxruntime and the LiteRT file in a LiteRT interpreter.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import keras

from hatnet_keras.cli.export import main as export_cli
from hatnet_keras.export import (
    FORMATS,
    SERVE,
    SERVE_BYTES,
    ExportNotSupportedError,
    check_supported,
    export_model,
    inference_model,
)
from conftest import build_reduced, reference_path

BACKEND = keras.backend.backend()
IMAGE_SIZE = 64
# The SavedModel takes any height and width under TensorFlow only (see serving_input_spec).
FREE_SIZE = BACKEND == "tensorflow"


def _pixels(shape, seed):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def _predict(model, images):
    return keras.ops.convert_to_numpy(model(images, training=False))


def _has(module):
    return importlib.util.find_spec(module) is not None


def _needs(fmt):
    """Skips unless the current backend can export `fmt` with what is installed."""
    try:
        check_supported(fmt)
    except ExportNotSupportedError as error:
        pytest.skip(f"{BACKEND} cannot export {fmt} here (the error is tested below): {error}")


@pytest.fixture(scope="module")
def model():
    return build_reduced(input_shape=(None, None, 3))


@pytest.fixture(scope="module")
def pixels():
    """Inputs at the export size, and (with free sizes) at a size no window divides."""
    inputs = {"square": _pixels((2, IMAGE_SIZE, IMAGE_SIZE, 3), seed=1)}
    if FREE_SIZE:
        inputs["odd"] = _pixels((1, 48, 80, 3), seed=2)
    return inputs


# --- SavedModel -----------------------------------------------------------------

# Runs in a fresh interpreter where Keras and hatnet_keras cannot be imported (TensorFlow
# tries to import Keras, and goes on without it): the SavedModel with TensorFlow alone.
_SERVING_CLIENT = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, json, sys

    class Blocked(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise ModuleNotFoundError(f"{module.__name__} is blocked in this process")

    class NoKeras(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("keras", "hatnet_keras"):
                return importlib.machinery.ModuleSpec(name, Blocked())

    sys.meta_path.insert(0, NoKeras())
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, files, outputs_path = sys.argv[1:]
    reloaded = tf.saved_model.load(export_dir)
    outputs = {}
    with np.load(inputs_path) as inputs:
        for name in inputs.files:
            outputs["serve/" + name] = reloaded.serve(tf.constant(inputs[name])).numpy()
    image_bytes = tf.stack([tf.io.read_file(path) for path in files.split(",")])
    outputs["serve_bytes"] = reloaded.serve_bytes(image_bytes).numpy()
    np.savez(outputs_path, **outputs)

    def attr_dtypes(nodes):
        for node in nodes:
            for value in node.attr.values():
                yield from ([value.type] if value.type else value.list.type)

    graph = reloaded.signatures["serve"].graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    print(json.dumps({
        "keras_imported": any(m.split(".")[0] in ("keras", "hatnet_keras") for m in sys.modules),
        "signatures": sorted(reloaded.signatures),
        "variable_dtypes": sorted({v.dtype.name for v in reloaded.variables if v.dtype.is_floating}),
        "graph_dtypes": sorted({tf.dtypes.as_dtype(t).name for t in attr_dtypes(nodes)}),
        "serve_input": str(reloaded.signatures["serve"].structured_input_signature),
    }))
    """
)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """A PNG (80 x 100) and a JPEG (96 x 72), as a client would send them."""
    folder = tmp_path_factory.mktemp("images")
    png = np.random.default_rng(3).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    jpeg = np.random.default_rng(4).integers(0, 256, (96, 72, 3), dtype=np.uint8)
    (folder / "a.png").write_bytes(tf.io.encode_png(png).numpy())
    (folder / "b.jpg").write_bytes(tf.io.encode_jpeg(jpeg, quality=90).numpy())
    return [folder / "a.png", folder / "b.jpg"]


@pytest.fixture(scope="module")
def mixed_precision_model_file(model, tmp_path_factory):
    """`model`'s weights in a model trained under mixed_float16, saved as .keras."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = build_reduced()  # the default 224 x 224 input: the export frees it
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(model.get_weights())
    assert mixed.layers[2].dtype_policy.name == "mixed_float16"
    path = tmp_path_factory.mktemp("keras") / "mixed.keras"
    mixed.save(path)
    return path


@pytest.fixture(scope="module")
def served(mixed_precision_model_file, pixels, image_files, tmp_path_factory):
    """Exports with hatnet-export --model and serves it from a process without Keras."""
    _needs("tf_saved_model")
    folder = tmp_path_factory.mktemp("saved_model")
    export_dir = folder / "hatnet"
    code = export_cli(
        [
            "--model", str(mixed_precision_model_file),
            "--output", str(export_dir),
            "--image-size", str(IMAGE_SIZE),
        ]
    )
    assert code == 0
    np.savez(folder / "inputs.npz", **pixels)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [
            sys.executable, "-c", _SERVING_CLIENT,
            str(export_dir), str(folder / "inputs.npz"),
            ",".join(map(str, image_files)), str(folder / "outputs.npz"),
        ],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / "outputs.npz") as outputs:
        return json.loads(result.stdout.strip().splitlines()[-1]), dict(outputs), export_dir


def test_saved_model_serves_without_keras_in_float32(served):
    report, _, _ = served
    assert report["keras_imported"] is False
    assert {SERVE, SERVE_BYTES, "serving_default"} <= set(report["signatures"])
    assert report["variable_dtypes"] == ["float32"]
    assert not {"float16", "bfloat16"} & set(report["graph_dtypes"])
    spatial = "None, None" if FREE_SIZE else f"{IMAGE_SIZE}, {IMAGE_SIZE}"
    assert f"shape=(None, {spatial}, 3)" in report["serve_input"]


def test_saved_model_serve_equals_keras(served, model, pixels):
    _, outputs, _ = served
    for name, images in pixels.items():
        np.testing.assert_allclose(
            outputs[f"serve/{name}"], _predict(model, images), rtol=0, atol=1e-5, err_msg=name
        )


def test_saved_model_stores_each_weight_once(served, model):
    _, _, export_dir = served
    checkpoint = tf.train.load_checkpoint(str(export_dir / "variables" / "variables"))
    dtypes = checkpoint.get_variable_to_dtype_map()
    stored = sum(
        int(np.prod(shape))
        for name, shape in checkpoint.get_variable_to_shape_map().items()
        if dtypes[name].is_floating
    )
    assert stored == model.count_params()


def _eval_crop(image, resized_size, offset):
    """Bicubic resize to `resized_size` (computed by hand), then an IMAGE_SIZE crop at `offset`."""
    resized = tf.image.resize(
        tf.cast(image, tf.float32), resized_size, method="bicubic", antialias=True
    )
    resized = tf.clip_by_value(resized, 0.0, 255.0).numpy()
    top, left = offset
    return resized[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]


def test_saved_model_serve_bytes_decodes_resizes_and_crops(served, model, image_files):
    _, outputs, _ = served
    png = tf.io.decode_png(image_files[0].read_bytes()).numpy()
    jpeg = tf.io.decode_jpeg(image_files[1].read_bytes()).numpy()
    # Short side to floor(64 / 0.875) = 73, long side by the aspect ratio, centre crop 64.
    expected_inputs = np.stack(
        [
            _eval_crop(png, (73, 91), (4, 13)),  # 80 x 100 -> 73 x 91.25
            _eval_crop(jpeg, (97, 73), (16, 4)),  # 96 x 72 -> 97.3 x 73
        ]
    )
    np.testing.assert_allclose(
        outputs["serve_bytes"], _predict(model, expected_inputs), rtol=0, atol=1e-5
    )


def test_inference_model_is_float32_with_the_same_weights(model, pixels):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_reduced(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(model.get_weights())
    exported = inference_model(mixed)
    assert exported.input_shape == (None, None, None, 3)
    assert {layer.dtype_policy.name for layer in exported._flatten_layers()} == {"float32"}
    assert {variable.dtype for variable in exported.weights} == {"float32"}
    assert keras.config.dtype_policy().name == previous.name
    images = pixels["square"]  # the shapes the other tests use: no new JAX compilation
    np.testing.assert_array_equal(_predict(exported, images), _predict(model, images))


# --- ONNX and LiteRT --------------------------------------------------------------


def test_onnx_equals_keras(model, pixels, tmp_path):
    _needs("onnx")
    ort = pytest.importorskip("onnxruntime")
    weights = tmp_path / "reduced.weights.h5"
    model.save_weights(weights)
    output = tmp_path / "reduced.onnx"
    code = export_cli(
        [
            "--config", str(reference_path("reduced_hatnet_config.json")),
            "--weights", str(weights),
            "--format", "onnx",
            "--output", str(output),
            "--image-size", str(IMAGE_SIZE),
        ]
    )
    assert code == 0
    session = ort.InferenceSession(str(output))
    assert [tensor.name for tensor in session.get_inputs()] == ["images"]
    for name, images in pixels.items():
        (probabilities,) = session.run(None, {"images": images})
        np.testing.assert_allclose(
            probabilities, _predict(model, images), rtol=0, atol=1e-4, err_msg=name
        )


def _litert_interpreter(path):
    if _has("ai_edge_litert"):
        from ai_edge_litert.interpreter import Interpreter
    else:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path))


def _litert_run(interpreter, images):
    (input_details,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(input_details["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_details["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_litert_equals_keras(model, pixels, tmp_path):
    _needs("litert")
    path = tmp_path / "reduced.tflite"
    export_model(model, path, format="litert", image_size=IMAGE_SIZE)
    interpreter = _litert_interpreter(path)
    for name, images in pixels.items():
        np.testing.assert_allclose(
            _litert_run(interpreter, images), _predict(model, images), rtol=0, atol=1e-4,
            err_msg=name,
        )


# --- What cannot be exported --------------------------------------------------------

_UNSUPPORTED = [("jax", "onnx"), ("jax", "litert"), ("torch", "litert")]


@pytest.mark.parametrize("backend, fmt", _UNSUPPORTED)
def test_unsupported_pairs_name_backend_format_and_remedy(backend, fmt):
    with pytest.raises(ExportNotSupportedError) as caught:
        check_supported(fmt, backend)
    message = str(caught.value)
    assert f"{fmt!r}" in message and f"{backend!r}" in message
    assert "KERAS_BACKEND" in message and "tensorflow" in message


def test_current_backend_refuses_before_any_work(model, tmp_path):
    """export_model itself raises the clear error (and the CLI exits 2 with it)."""
    refused = [fmt for backend, fmt in _UNSUPPORTED if backend == BACKEND]
    if BACKEND == "torch" and not _has("torch_xla"):
        refused.append("tf_saved_model")
    if not refused:
        pytest.skip(f"{BACKEND} exports every format: {FORMATS}")
    for fmt in refused:
        with pytest.raises(ExportNotSupportedError, match=f"{fmt!r}.*{BACKEND!r}"):
            export_model(model, tmp_path / "out", format=fmt)
        code = export_cli(["--variant", "tiny", "--output", str(tmp_path / "out"), "--format", fmt])
        assert code == 2


def test_torch_saved_model_needs_torch_xla(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch_xla" else real_find_spec(name, *args),
    )
    with pytest.raises(ExportNotSupportedError, match="torch_xla") as caught:
        check_supported("tf_saved_model", "torch")
    assert "pip install torch_xla" in str(caught.value)
    assert "['tensorflow', 'jax']" in str(caught.value)


def test_bad_format_and_file_suffix(model, tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(model, tmp_path / "out", format="coreml")
    if "onnx" in _supported_here():
        with pytest.raises(ValueError, match=r"writes a \.onnx file"):
            export_model(model, tmp_path / "model.bin", format="onnx")


def _supported_here():
    supported = []
    for fmt in FORMATS:
        try:
            check_supported(fmt)
        except ExportNotSupportedError:
            continue
        supported.append(fmt)
    return supported
