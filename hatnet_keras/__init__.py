"""hatnet-keras: HAT-Net, the vision transformer with hierarchical attention, in Keras 3."""

from hatnet_keras import layers
from hatnet_keras.cpu_memory import reuse_freed_memory
from hatnet_keras.model import (
    VARIANTS,
    HATNet,
    HATNetLarge,
    HATNetMedium,
    HATNetSmall,
    HATNetTiny,
    pyramid_model,
    pyramid_outputs,
)

__version__ = "0.1.0"

__all__ = [
    "HATNet",
    "HATNetLarge",
    "HATNetMedium",
    "HATNetSmall",
    "HATNetTiny",
    "VARIANTS",
    "layers",
    "pyramid_model",
    "pyramid_outputs",
    "reuse_freed_memory",
]
