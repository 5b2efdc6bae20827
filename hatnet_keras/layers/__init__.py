"""HAT-Net layers, written with `keras.ops`.

The one exception is in `kernels`: under XLA on a CPU the depthwise kernel gradient
takes a variadic reduction from `jax.lax` or TensorFlow's XLA ops, which keras.ops lacks.
"""

from hatnet_keras.layers.attention import (
    GlobalAttention,
    HierarchicalAttention,
    LocalWindowAttention,
    MergePooling,
)
from hatnet_keras.layers.block import DropPath, HATBlock
from hatnet_keras.layers.embedding import Downsample, Stem
from hatnet_keras.layers.ffn import ConvFFN
from hatnet_keras.layers.normalization import GroupNorm

__all__ = [
    "ConvFFN",
    "Downsample",
    "DropPath",
    "GlobalAttention",
    "GroupNorm",
    "HATBlock",
    "HierarchicalAttention",
    "LocalWindowAttention",
    "MergePooling",
    "Stem",
]
