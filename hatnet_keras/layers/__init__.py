"""HAT-Net layers, written with `keras.ops`.

Two modules step outside it, each for one backend's speed and with the same
results: `kernels`, where XLA on a CPU takes a variadic reduction from `jax.lax` or
TensorFlow's XLA ops and, on JAX, `jax.lax.optimization_barrier`, which keras.ops
lacks; and the eager torch backend's path, which calls PyTorch's layout, dtype and
SiLU ops (`eager`), and its layer norm, convolutions, pooling and attention (where
`eager.is_torch_tensor` holds), without Keras' per-op host time.
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
