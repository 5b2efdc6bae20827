"""Top-1 / top-5 accuracy of a classifier on a dataset of one-hot labelled batches."""

from hatnet_keras.training.classifier import classification_metrics


def evaluate_classifier(model, dataset):
    """Accuracy of `model` over one pass of `dataset` (batches of images and one-hot labels).

    Works on probabilities or logits alike (only the ranking matters).

    Returns:
        `{"images": n, "accuracy": top1, "top5_accuracy": top5}`, the last
        only for models with more than 5 classes.

    Example:

    ```python
    val_ds, _ = image_folder_dataset("data/val", training=False, image_size=224)
    evaluate_classifier(keras.saving.load_model("runs/x/model.keras"), val_ds)
    # {'images': 500, 'accuracy': 0.91, 'top5_accuracy': 0.99}
    ```
    """
    classes = model.output_shape[-1]
    metrics = classification_metrics(classes)
    images = 0
    for batch, labels in dataset.as_numpy_iterator():
        if labels.shape[-1] != classes:
            raise ValueError(
                f"The dataset has {labels.shape[-1]} classes but the model predicts {classes}."
            )
        predictions = model.predict_on_batch(batch)
        for metric in metrics:
            metric.update_state(labels, predictions)
        images += len(labels)
    if images == 0:
        raise ValueError("The evaluation dataset is empty.")
    return {"images": images, **{metric.name: float(metric.result()) for metric in metrics}}
