"""The LiteRT (TFLite) export, through Keras' converter under TensorFlow."""

import re

from hatnet_keras.export.saved_model import serving_input_spec
from hatnet_keras.export.support import ExportNotSupportedError


def export_litert(model, path, image_size=224, select_tf_ops=False, verbose=False):
    """Writes `model` as a `.tflite` file taking float32 `(batch, height, width, 3)` pixels.

    Batch, height and width are dynamic: resize the interpreter's input
    tensor before `allocate_tensors()`. By default only LiteRT builtin ops
    are allowed, so the file runs on any LiteRT runtime; `select_tf_ops=True`
    also allows TensorFlow ops, which need a runtime linked with the Flex
    delegate.

    Args:
        model: a float32 model (see `inference_model`).
        path: the `.tflite` file to write.
        image_size: the fixed height and width where the backend needs one.
        select_tf_ops: allow TensorFlow ops that LiteRT has no builtin for.
        verbose: print the converter's summary.

    Example:

    ```python
    export_litert(inference_model(model), "hatnet.tflite")
    interpreter = ai_edge_litert.interpreter.Interpreter(model_path="hatnet.tflite")
    ```
    """
    import tensorflow as tf

    supported_ops = {tf.lite.OpsSet.TFLITE_BUILTINS}
    if select_tf_ops:
        supported_ops.add(tf.lite.OpsSet.SELECT_TF_OPS)
    try:
        model.export(
            str(path),
            format="litert",
            input_signature=[serving_input_spec(image_size)],
            target_spec={"supported_ops": supported_ops},
            verbose=verbose,
        )
    except Exception as error:  # the converter raises its own ConverterError
        if select_tf_ops or "NEEDS_FLEX_OPS" not in str(error):
            raise
        ops = sorted(set(re.findall(r"'(tf\.\w+)' op is neither", str(error))))
        raise ExportNotSupportedError(
            f"LiteRT conversion with builtin ops only failed: the model uses {ops}, "
            "which LiteRT has no builtin for as used here (an N-D transpose has a "
            "builtin up to 6 dimensions). Pass select_tf_ops=True (hatnet-export "
            "--select-tf-ops) to keep them as TensorFlow ops, for a LiteRT runtime "
            "linked with the Flex delegate."
        ) from error
