"""The ONNX export: tf2onnx under TensorFlow, torch.onnx under PyTorch."""

import keras

from hatnet_keras.export.saved_model import SERVE, serving_input_spec


def _frozen_serving_graph(model, spec):
    """The model's inference graph with weights and captured constants folded in."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    archive = keras.export.ExportArchive()
    serve = archive.track_and_add_endpoint(SERVE, model, [spec])
    # Folding matters: tf2onnx turns a captured tensor that is not a variable
    # (the Normalization layer's mean and variance) into an extra graph input.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
    outputs = [t.name for t in frozen.outputs]
    return frozen.graph.as_graph_def(), inputs, outputs


def _integer_floor_mod(ctx, node, name, args):
    """tf2onnx handler for TF's FloorMod: ONNX `Mod` (fmod=0) for integers.

    tf2onnx's own handler computes `x - (x / y) * y` with ONNX's truncating
    integer `Div`, which is wrong for a negative `x`; the window padding
    `(-size) % grid` is exactly that case (onnx/tensorflow-onnx#2174 reports
    the same truncation for FloorDiv, which this model only uses on sizes >= 0).
    """
    from onnx import TensorProto
    from tf2onnx.onnx_opset.math import FloorMod

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    if ctx.get_dtype(node.input[0]) in floats or ctx.opset < 10:
        FloorMod.version_7(ctx, node)
        return
    node.type = "Mod"
    node.set_attr("fmod", 0)


def _export_from_tensorflow(model, path, spec, opset):
    import tf2onnx

    graph_def, inputs, outputs = _frozen_serving_graph(model, spec)
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=inputs,
        output_names=outputs,
        opset=opset,
        custom_op_handlers={"FloorMod": (_integer_floor_mod, [])},
        tensors_to_rename={inputs[0]: spec.name},
        output_path=str(path),
    )


def export_onnx(model, path, image_size=224, opset=None, verbose=False):
    """Writes `model` as an ONNX file taking float32 `(batch, height, width, 3)` pixels.

    The batch size is free. Under TensorFlow (tf2onnx) height and width are
    free too; under PyTorch (torch.onnx) the model is traced at `image_size`
    and takes that size only.

    Args:
        model: a float32 model (see `inference_model`).
        path: the `.onnx` file to write.
        image_size: the fixed height and width where the backend needs one.
        opset: ONNX opset, or None for the converter's default.
        verbose: print the converter's messages.

    Example:

    ```python
    export_onnx(inference_model(model), "hatnet.onnx")
    session = onnxruntime.InferenceSession("hatnet.onnx")
    session.run(None, {session.get_inputs()[0].name: images})[0].shape  # (2, 1000)
    ```
    """
    spec = serving_input_spec(image_size)
    if keras.backend.backend() == "tensorflow":
        _export_from_tensorflow(model, path, spec, opset)
    else:
        model.export(
            str(path),
            format="onnx",
            input_signature=[spec],
            opset_version=opset,
            verbose=verbose,
        )
