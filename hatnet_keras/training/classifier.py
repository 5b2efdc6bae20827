"""HAT-Net classifiers for training (logits out) and for users (probabilities out)."""

import keras

from hatnet_keras.model import HATNet, find_variant

HEAD_LAYER = "predictions"


def build_classifier(
    architecture,
    classes,
    *,
    image_size=None,
    weights=None,
    drop_path_rate=0.1,
    dropout_rate=0.0,
    name="hatnet",
):
    """A HAT-Net that outputs logits, optionally fine-tuning pretrained weights.

    The model is exactly what `hatnet_keras.HATNet` builds (raw RGB [0, 255]
    in, preprocessing inside, head layer `predictions`) with
    `classifier_activation=None`, to train with a `from_logits=True` loss;
    `with_softmax` turns it into the probability model users get.

    With `weights`, everything but the head (stem, stages, norms) is loaded
    from "imagenet", a PyTorch `.pth` checkpoint or a Keras `.weights.h5`
    file of the same architecture, whatever its class count, and the head is
    freshly initialised for `classes`.

    Args:
        architecture: `hatnet_keras.HATNet` architecture arguments, e.g.
            `hatnet_keras.VARIANTS["tiny"]`.
        classes: number of classes of the new head.
        image_size: side of the square training images (None: any size).
        weights: None (from scratch), "imagenet" or a weights file.
        drop_path_rate: stochastic depth of the last block (recipe: 0.1).
        dropout_rate: dropout before the head.
        name: the model's name.

    Example:

    ```python
    model = build_classifier(hatnet_keras.VARIANTS["tiny"], classes=5,
                             image_size=224, weights="imagenet")
    model.get_layer("predictions").units  # 5
    ```
    """
    model = HATNet(
        **architecture,
        classes=classes,
        classifier_activation=None,
        input_shape=(image_size, image_size, 3),
        drop_path_rate=drop_path_rate,
        dropout_rate=dropout_rate,
        name=name,
    )
    if weights is not None:
        from hatnet_keras.weights import load_weights

        # A view of the same layers without the head: loading into it fills the
        # backbone of `model` and leaves the new head as initialised.
        backbone = keras.Model(model.input, model.get_layer("avg_pool").input)
        load_weights(backbone, weights, variant=find_variant(architecture))
    return model


def with_softmax(model):
    """A copy of a logits HAT-Net classifier whose head ends in softmax, with the same weights.

    Example:

    ```python
    probabilities = with_softmax(model).predict(images)
    ```
    """
    config = model.get_config()
    for layer in config["layers"]:
        if layer["name"] == HEAD_LAYER:
            layer["config"]["activation"] = "softmax"
            break
    else:
        raise ValueError(f"Model {model.name!r} has no layer named {HEAD_LAYER!r}.")
    copy = model.__class__.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def classification_metrics(classes):
    """Top-1 accuracy, plus top-5 when there are more than 5 classes.

    Named `accuracy` and `top5_accuracy`; they read one-hot (or mixed)
    labels and either logits or probabilities.

    Example:
    >>> from hatnet_keras.training import classification_metrics
    >>> [metric.name for metric in classification_metrics(10)]
    ['accuracy', 'top5_accuracy']
    """
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return metrics
