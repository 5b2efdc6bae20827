"""Looking inside a trained HAT-Net: attention maps, class activation maps, plots.

* `attention_maps`: the local-window and global attention weights of one block's
  H-MHSA for one query position, laid out on the block's feature map.
* `class_activation_map`: CAM (Zhou et al., 2016) for HAT-Net's head, global
  average pooling then a dense layer: the last stage's features weighted by the
  head's weights for a class. A forward pass only, no gradients, so it works the
  same on every backend.
* `upsample`: nearest-neighbour resizing of those maps to the image.
* `show_images`, `plot_history`, `plot_attention_maps`, `plot_class_activation_map`:
  matplotlib figures (matplotlib is imported only when a figure must be made).

Every function takes a model built by `hatnet_keras` (`HATNet`, `HATNetTiny`, ...,
`training.build_classifier`, `training.with_softmax`, or one of these reloaded from
a `.keras` file) and images as the model takes them: RGB in [0, 255],
`(batch, height, width, 3)`.

Example:

```python
maps = attention_maps(model, images[:1], block="stage1_block1")
cams, classes, logits = class_activation_map(model, images[:1])
fig, axes = plt.subplots(1, 4)
plot_attention_maps(axes[:3], images[0], maps)
plot_class_activation_map(axes[3], images[0], cams[0])
```
"""

import weakref

import keras
import numpy as np

HEAD_LAYER = "predictions"
POOL_LAYER = "avg_pool"

# Sub-models made for a model, kept while it lives: each one compiles on its first
# call (slow on JAX), so asking again about the same model reuses it.
_SUBMODELS = weakref.WeakKeyDictionary()


def _submodel(model, key, build):
    cache = _SUBMODELS.setdefault(model, {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _block(model, block):
    try:
        layer = model.get_layer(block)
    except ValueError:
        layer = None
    if layer is None or not hasattr(layer, "attn"):
        blocks = [x.name for x in model.layers if hasattr(x, "attn")]
        raise ValueError(f"Model {model.name!r} has no HAT-Net block {block!r}; it has {blocks}.")
    return layer


def _run(model, images, batch_size):
    """`model` on numpy `images`, returning numpy (compiled once on JAX, not op by op)."""
    outputs = model.predict(np.asarray(images, dtype="float32"), batch_size=batch_size, verbose=0)
    return keras.tree.map_structure(np.asarray, outputs)


def attention_scores_model(model, block):
    """A model from `model`'s images to block `block`'s attention weights.

    It shares `model`'s layers and weights (and is made once per model and block)
    and returns the dict of
    `HierarchicalAttention.call(x, return_attention_scores=True)`: "local"
    `(batch, windows, heads, G * G, G * G)` (absent when G = 1) and "global"
    `(batch, heads, height * width, key tokens)`, float32, on the block's map.

    Example:

    ```python
    scores = attention_scores_model(model, "stage2_block1").predict(images)
    ```
    """
    layer = _block(model, block)

    def build():
        _, scores = layer.attn(layer.input, return_attention_scores=True)
        return keras.Model(model.input, scores, name=f"{model.name}_{block}_attention")

    return _submodel(model, ("attention", block), build)


def attention_maps(model, images, block="stage1_block1", query=None, batch_size=32, scores=None):
    """Where one position of a block's feature map attends, in the local and global steps.

    Args:
        model: a HAT-Net built by `hatnet_keras`.
        images: `(batch, height, width, 3)` RGB in [0, 255].
        block: the block's name, `stage{s}_block{i}` (1-based).
        query: `(row, col)` of the query position on the block's feature map;
            default its centre.
        batch_size: images per forward pass.
        scores: optional, what `attention_scores_model(model, block)` predicted for
            `images`: reused instead of running the model again (to look at
            several queries of the same images).

    Returns:
        A dict of numpy arrays (heads kept apart; average them for one map):

        * "local": `(batch, heads, H, W)`, the query's local-window softmax weights
          placed where their keys are on the `H x W` feature map, zero outside the
          query's G x G window; each `[b, h]` map sums to 1. None when the block's
          grid size G is 1 (plain global attention, no local step).
        * "global": `(batch, heads, kh, kw)`, the query's global-step weights over
          the key grid: the map pooled by r (`ceil(H / r) x ceil(W / r)` cells) or,
          when G = 1, all `H x W` positions. Each `[b, h]` map sums to 1.
        * "global_mean": like "global", averaged over every query position: which
          key tokens the whole map looks at.
        * "query": the `(row, col)` used; "feature_size": `(H, W)`;
          "grid_size": G; "pool_ratio": r (1 when G = 1).

    Example:

    ```python
    maps = attention_maps(model, images[:2], block="stage1_block1", query=(5, 9))
    maps["local"].mean(axis=1).shape  # averaged over heads: (2, 16, 16)
    ```
    """
    layer = _block(model, block)
    grid, ratio = layer.attn.grid_size, layer.attn.pool_ratio
    if scores is None:
        scores = _run(attention_scores_model(model, block), images, batch_size)
    global_weights = np.asarray(scores["global"])
    batch, heads, positions, _ = global_weights.shape
    height, width = _feature_size(model, block, images, positions)
    row, col = query if query is not None else (height // 2, width // 2)
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"query {(row, col)} is outside the {height}x{width} feature map.")

    if grid == 1:
        key_grid, ratio, local = (height, width), 1, None
    else:
        key_grid = (-(-height // ratio), -(-width // ratio))
        local = _local_map(np.asarray(scores["local"]), grid, height, width, row, col)
    return {
        "local": local,
        "global": global_weights[:, :, row * width + col].reshape(batch, heads, *key_grid),
        "global_mean": global_weights.mean(axis=2).reshape(batch, heads, *key_grid),
        "query": (row, col),
        "feature_size": (height, width),
        "grid_size": grid,
        "pool_ratio": ratio,
    }


def _feature_size(model, block, images, positions):
    """`(H, W)` of the block's map: from the model's static shape, or from the image's aspect."""
    height, width = model.get_layer(block).input.shape[1:3]
    if height is not None and width is not None:
        return height, width
    # Free input size: every stage halves (rounding up) from the same image, so the
    # map keeps the image's proportions; find the factorisation of `positions` that does.
    image_height, image_width = np.shape(images)[1:3]
    for stride in (4, 8, 16, 32):
        size = -(-image_height // stride), -(-image_width // stride)
        if size[0] * size[1] == positions:
            return size
    raise ValueError(f"Cannot place {positions} positions on a map of {image_height}x{image_width} images.")


def _local_map(local, grid, height, width, row, col):
    """The query's window weights `(batch, windows, heads, G*G, G*G)` on the `(H, W)` map."""
    batch, _, heads = local.shape[:3]
    cols = -(-width // grid)
    window = (row // grid) * cols + col // grid
    token = (row % grid) * grid + col % grid
    weights = local[:, window, :, token, :].reshape(batch, heads, grid, grid)
    padded = np.zeros((batch, heads, -(-height // grid) * grid, cols * grid), dtype=local.dtype)
    top, left = (row // grid) * grid, (col // grid) * grid
    padded[:, :, top : top + grid, left : left + grid] = weights
    return padded[:, :, :height, :width]


def class_activation_map(model, images, class_index=None, batch_size=32):
    """Class activation maps of a HAT-Net classifier, computed from its head's weights.

    HAT-Net's head is global average pooling then a dense layer, so a class's
    logit is the mean over positions of `features @ kernel[:, k] + bias[k]`, the
    last stage's features through the head's weights for class k. That map, at
    the last stage's resolution (stride 32), is the CAM; its mean is exactly the
    logit (before the head's softmax, if the model has one).

    Args:
        model: a HAT-Net with its head (`include_top=True`).
        images: `(batch, height, width, 3)` RGB in [0, 255].
        class_index: the class to explain: an int for all images, a sequence of
            one int per image, or None for each image's predicted class.
        batch_size: images per forward pass.

    Returns:
        `(cams, class_indices, logits)`: `cams` `(batch, h, w)` float32 (positive
        where the features speak for the class), `class_indices` `(batch,)` int,
        `logits` `(batch, classes)`, recomputed from the features.

    Example:

    ```python
    cams, classes, logits = class_activation_map(model, images)
    np.allclose(cams.mean(axis=(1, 2)), logits[np.arange(len(classes)), classes])  # True
    ```
    """
    try:
        pool, head = model.get_layer(POOL_LAYER), model.get_layer(HEAD_LAYER)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no {POOL_LAYER!r} and {HEAD_LAYER!r} layers: a class "
            "activation map needs a HAT-Net classifier with its head (include_top=True)."
        ) from None
    features_model = _submodel(model, "features", lambda: keras.Model(model.input, pool.input))
    features = _run(features_model, images, batch_size).astype("float32")
    kernel = keras.ops.convert_to_numpy(head.kernel).astype("float32")
    bias = keras.ops.convert_to_numpy(head.bias).astype("float32") if head.use_bias else 0.0
    maps = features @ kernel + bias  # (batch, h, w, classes)
    logits = maps.mean(axis=(1, 2))
    if class_index is None:
        classes = logits.argmax(axis=-1)
    else:
        classes = np.broadcast_to(np.asarray(class_index, dtype="int64"), (len(maps),))
    cams = np.take_along_axis(maps, classes[:, None, None, None], axis=-1)[..., 0]
    return cams, classes, logits


def upsample(maps, size):
    """Nearest-neighbour resize of `(..., h, w)` maps to `(..., height, width)`.

    Every output pixel takes the value of the map cell it falls in, so a map of
    a stride-s feature grid lands on the image pixels that cell covers.

    Example:
    >>> import numpy as np
    >>> from hatnet_keras.visualize import upsample
    >>> upsample(np.arange(4.0).reshape(2, 2), (4, 4))[:, 0]
    array([0., 0., 2., 2.])
    """
    height, width = size
    rows = np.arange(height) * maps.shape[-2] // height
    cols = np.arange(width) * maps.shape[-1] // width
    return maps[..., rows[:, None], cols[None, :]]


def _as_image(image):
    image = np.asarray(keras.ops.convert_to_numpy(image), dtype="float32")
    return np.clip(image, 0, 255).astype("uint8")


def _extent(image):
    height, width = np.shape(image)[:2]
    return (0, width, height, 0)  # imshow's (left, right, bottom, top) in image pixels


def _show(ax, image):
    ax.imshow(_as_image(image), extent=_extent(image))  # the same pixel frame as the maps


def _overlay(ax, image, heat, title, cmap="inferno", interpolation="nearest", alpha=0.6):
    _show(ax, image)
    shown = ax.imshow(
        heat, cmap=cmap, alpha=alpha, extent=_extent(image), interpolation=interpolation
    )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return shown


def show_images(axes, images, labels, class_names, probabilities=None):
    """Images with their labels; with `probabilities`, the prediction above the label.

    A correct prediction's title is green, a wrong one red.

    Args:
        axes: matplotlib axes, one per image (any array shape; extra axes are hidden).
        images: `(n, height, width, 3)` RGB in [0, 255].
        labels: `(n,)` class indices or `(n, classes)` one-hot rows.
        class_names: the names of the classes.
        probabilities: optional `(n, classes)` model outputs.

    Example:

    ```python
    fig, axes = plt.subplots(2, 4)
    show_images(axes, images[:8], labels[:8], class_names, model.predict(images[:8]))
    ```
    """
    axes = np.ravel(axes)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=-1)
    for index, ax in enumerate(axes):
        ax.set_axis_off()
        if index >= len(labels):
            continue
        ax.imshow(_as_image(images[index]))
        truth = class_names[int(labels[index])]
        if probabilities is None:
            ax.set_title(truth, fontsize=9)
            continue
        row = np.asarray(probabilities[index])
        guess = int(row.argmax())
        ax.set_title(
            f"{class_names[guess]} {100 * row[guess]:.0f}%\n(true: {truth})",
            fontsize=9,
            color="green" if guess == int(labels[index]) else "red",
        )


def plot_history(history, axes=None):
    """Loss and accuracy per epoch, training and validation, from `model.fit`'s History.

    Args:
        history: a `keras.callbacks.History` or its `.history` dict.
        axes: two matplotlib axes (loss, accuracy); None makes a new figure.

    Returns:
        The two axes.

    Example:

    ```python
    plot_history(model.fit(train_ds, validation_data=val_ds, epochs=5))
    ```
    """
    logs = getattr(history, "history", history)
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            if key in logs:
                values = logs[key]
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return axes


def plot_attention_maps(axes, image, maps, index=0, head=None):
    """One image's attention maps from `attention_maps`, over the image.

    Draws on three axes: the image with the query position marked; the query's
    local-window weights (a blank panel when the block has no local step); the
    query's global weights over the pooled tokens. Maps are averaged over heads
    unless `head` picks one, and stretched over the image cell by cell.

    Args:
        axes: three matplotlib axes.
        image: `(height, width, 3)` RGB in [0, 255], the image the maps are of.
        maps: the dict `attention_maps` returns.
        index: which image of the batch `maps` holds.
        head: a head's index, or None for the mean over heads.

    Example:

    ```python
    fig, axes = plt.subplots(1, 3)
    plot_attention_maps(axes, images[0], attention_maps(model, images[:1]))
    ```
    """
    height, width = np.shape(image)[:2]
    feature_height, feature_width = maps["feature_size"]
    row, col = maps["query"]
    centre = ((col + 0.5) * width / feature_width, (row + 0.5) * height / feature_height)
    which = "mean over heads" if head is None else f"head {head}"

    def pick(weights):
        weights = weights[index]
        return weights.mean(axis=0) if head is None else weights[head]

    ax = axes[0]
    _show(ax, image)
    ax.plot(*centre, marker="+", color="cyan", markersize=14, markeredgewidth=2)
    ax.set_title(f"query at map cell {tuple(maps['query'])}", fontsize=9)
    ax.set_axis_off()
    if maps["local"] is None:
        axes[1].set_axis_off()
        axes[1].set_title("no local step (G = 1)", fontsize=9)
    else:
        _overlay(axes[1], image, pick(maps["local"]), f"local window, G={maps['grid_size']} ({which})")
        axes[1].plot(*centre, marker="+", color="cyan", markersize=14, markeredgewidth=2)
    _overlay(axes[2], image, pick(maps["global"]), f"global, r={maps['pool_ratio']} ({which})")
    axes[2].plot(*centre, marker="+", color="cyan", markersize=14, markeredgewidth=2)
    return axes


def plot_class_activation_map(ax, image, cam, title="class activation map"):
    """A class activation map (one of `class_activation_map`'s) over its image.

    The map is smoothed bilinearly over the image; red is evidence for the class.

    Example:

    ```python
    cams, classes, _ = class_activation_map(model, images[:1])
    plot_class_activation_map(plt.gca(), images[0], cams[0], class_names[classes[0]])
    ```
    """
    limit = float(np.abs(cam).max()) or 1.0
    shown = _overlay(ax, image, cam, title, cmap="coolwarm", interpolation="bilinear", alpha=0.55)
    shown.set_clim(-limit, limit)
    return ax
