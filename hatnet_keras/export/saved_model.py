"""The TensorFlow SavedModel export: `serve` on pixels and `serve_bytes` on image files."""

import functools

import keras
import tensorflow as tf

from hatnet_keras.data.transforms import decode_image, resize_and_center_crop

SERVE = "serve"
SERVE_BYTES = "serve_bytes"


def serving_input_spec(image_size, backend=None):
    """The `serve` endpoint's input: float32 RGB `(batch, height, width, 3)` in [0, 255].

    Any batch size on every backend. Height and width are free (any size from
    32 pixels) under TensorFlow; elsewhere they are fixed to `image_size`:
    jax2tf's symbolic shapes cannot prove that the window attention's padded
    maps split evenly into windows, and torch's exporters trace the padding
    as constants.

    Example:
    >>> from hatnet_keras.export import serving_input_spec
    >>> serving_input_spec(224, backend="jax").shape
    (None, 224, 224, 3)
    >>> serving_input_spec(224, backend="tensorflow").shape
    (None, None, None, 3)
    """
    backend = backend or keras.backend.backend()
    side = None if backend == "tensorflow" else image_size
    return keras.InputSpec(shape=(None, side, side, 3), dtype="float32", name="images")


def image_bytes_endpoint(serve, image_size):
    """A `tf.function` from a batch of encoded images to `serve`'s output.

    Each string (JPEG, PNG, BMP or GIF) is decoded to RGB, resized (bicubic)
    so its short side is `floor(image_size / 0.875)` and centre-cropped to
    `image_size`: the evaluation transform of `hatnet_keras.data`.

    Args:
        serve: the pixel endpoint, a `tf.function` taking `(batch, h, w, 3)`.
        image_size: side of the square crop `serve` receives.

    Example:

    ```python
    serve_bytes = image_bytes_endpoint(archive_serve_fn, 224)
    serve_bytes(tf.constant([tf.io.read_file("cat.jpg").numpy()]))
    ```
    """

    def preprocess(data):
        return resize_and_center_crop(decode_image(data), image_size)

    @tf.function(
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
        autograph=False,
    )
    def serve_bytes(image_bytes):
        images = tf.map_fn(
            preprocess,
            image_bytes,
            fn_output_signature=tf.TensorSpec((image_size, image_size, 3), tf.float32),
        )
        return serve(images)

    return serve_bytes


def _add_serve_endpoint(archive, model, spec):
    if keras.backend.backend() != "tensorflow":
        return archive.track_and_add_endpoint(SERVE, model, [spec])
    # On TensorFlow, `track(model)` makes the SavedModel store every weight twice,
    # as the Keras variable and as the tf.Variable the endpoint captures
    # (keras-team/keras#23553): list the captured tf.Variables themselves instead.
    serve = archive.add_endpoint(
        SERVE, functools.partial(model.__call__, training=False), [spec]
    )
    archive.add_variable_collection("variables", [v.value for v in model.variables])
    return serve


def saved_model_archive(model, image_size=224):
    """A `keras.export.ExportArchive` with the `serve` and `serve_bytes` endpoints.

    `serve` (also `serving_default`) takes pixels as `serving_input_spec`
    describes; `serve_bytes` takes a `(batch,)` string tensor of encoded
    images. Both return what the model returns (class probabilities for a
    classifier). The model is used as it is: see `inference_model` for a
    float32 copy.

    Example:

    ```python
    archive = saved_model_archive(inference_model(model), image_size=224)
    archive.write_out("exported/hatnet")
    ```
    """
    archive = keras.export.ExportArchive()
    serve = _add_serve_endpoint(archive, model, serving_input_spec(image_size))
    serve_bytes = image_bytes_endpoint(serve, image_size)
    serve_bytes.get_concrete_function()  # traced once, so it can be added as it is
    archive.add_endpoint(SERVE_BYTES, serve_bytes)
    return archive


def export_saved_model(model, path, image_size=224, verbose=False):
    """Writes `model` as a SavedModel with the `serve` and `serve_bytes` signatures.

    The SavedModel is self-contained: it reloads with `tf.saved_model.load` (or
    TF Serving) without `hatnet_keras` or Keras.

    Example:

    ```python
    export_saved_model(inference_model(model), "exported/hatnet")
    reloaded = tf.saved_model.load("exported/hatnet")
    reloaded.serve(tf.zeros((1, 224, 224, 3))).shape  # TensorShape([1, 1000])
    ```
    """
    saved_model_archive(model, image_size).write_out(str(path), verbose=verbose)
