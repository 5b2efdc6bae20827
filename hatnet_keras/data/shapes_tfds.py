"""`hatnet_shapes`: the synthetic shapes images as a TensorFlow Datasets dataset, built offline.

Importing this module registers the builder, so that `tfds.load("hatnet_shapes")`
and `hatnet_keras.data.tfds_dataset("hatnet_shapes", ...)` work with no network:
preparing it draws the images (the same drawing as `write_synthetic_dataset`)
and writes TFRecords into the TFDS data directory, in a few seconds.

Configs (`"hatnet_shapes/<config>"`):

* `standard` (the default): 6 classes, 64 x 64 images, 400 per class for
  "train" and 100 per class for "test".
* `mini`: the same 6 classes at 32 x 32, 8 per class for "train" and 4 per class
  for "test", for smoke tests.

Example:

```python
import tensorflow_datasets as tfds
import hatnet_keras.data.shapes_tfds  # registers "hatnet_shapes"
train = tfds.load("hatnet_shapes", split="train", as_supervised=True)
```
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from hatnet_keras.data.synthetic import SHAPES, _draw_example

NAME = "hatnet_shapes"
# Different seeds per split, so that no test image is a copy of a training image.
_SPLIT_SEEDS = {"train": 0, "test": 1}


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Size of a `hatnet_shapes` config: image side and images per class in each split."""

    image_size: int = 64
    train_per_class: int = 400
    test_per_class: int = 100


class HatnetShapes(tfds.core.GeneratorBasedBuilder):
    """Images of one light shape (circle, cross, diamond, ring, square, triangle) on a noisy background."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="standard", description="64 x 64, 400 + 100 images per class."),
        ShapesConfig(
            name="mini",
            description="32 x 32, 8 + 4 images per class, for smoke tests.",
            image_size=32,
            train_per_class=8,
            test_per_class=4,
        ),
    ]
    DEFAULT_CONFIG_NAME = "standard"
    # Stated, not derived: TFDS' derivation needs the `importlib_resources` backport
    # for a package outside tensorflow_datasets, which Python 3.9+ does not install.
    code_path = epath.Path(__file__)

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=(
                "Synthetic images of simple shapes (hatnet_keras.data.write_synthetic_dataset's "
                "drawing): one filled or outlined light shape of random size, position, tilt "
                "and colour on a dark noisy gradient. The class is the shape."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(names=sorted(SHAPES)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.train_per_class),
            "test": self._generate_examples("test", config.test_per_class),
        }

    def _generate_examples(self, split, per_class):
        size = self.builder_config.image_size
        rng = np.random.default_rng(_SPLIT_SEEDS[split])
        names = sorted(SHAPES)
        for index in range(per_class):
            for shape in names:
                key = f"{shape}_{index:05d}"
                yield key, {"image": _draw_example(shape, size, rng), "label": names.index(shape)}
