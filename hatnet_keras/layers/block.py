"""The HAT-Net block and its stochastic depth."""

import keras
from keras import ops

from hatnet_keras.layers.attention import HierarchicalAttention
from hatnet_keras.layers.ffn import ConvFFN
from hatnet_keras.layers.sublayer import DirectCallOnTorch, call_sublayer


@keras.saving.register_keras_serializable(package="hatnet_keras")
class DropPath(keras.layers.Layer):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples.

    Each sample's branch is kept with probability `1 - rate` and scaled by
    `1 / (1 - rate)`, so its expectation is unchanged; at inference it is the
    identity.

    Args:
        rate: probability of dropping a sample's branch.
        seed: optional integer seed. Without one, the draws follow
            `keras.utils.set_random_seed` (on torch, torch's own generator).
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import DropPath
    >>> drop = DropPath(0.5, seed=1)
    >>> x = keras.ops.ones((4, 2, 2, 3))
    >>> bool(keras.ops.all(drop(x, training=False) == x))
    True
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        # Dropout of ones gives the per-sample mask, 0 or 1 / (1 - rate). Unseeded on
        # torch, Keras draws it from torch's own generator; a seeded draw (or uniform
        # noise) updates the seed state and reads it back to the host, which waits for
        # the GPU at each of HAT-Net-Small's 30 residual branches in a training step.
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        ones = ops.ones(shape, dtype=x.dtype)
        return x * keras.random.dropout(ones, self.rate, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="hatnet_keras")
class HATBlock(DirectCallOnTorch, keras.layers.Layer):
    """One HAT-Net block: `x + drop_path(H-MHSA(x))`, then `x + drop_path(ConvFFN(x))`.

    Args:
        head_dim: channels per attention head.
        grid_size: window side G of the local step (1: plain global attention).
        pool_ratio: pooling ratio r of the merge step.
        expansion: hidden width of the conv FFN as a multiple of the channels.
        kernel_size: depthwise kernel size of the conv FFN.
        drop_path_rate: stochastic depth rate of both residual branches.
        epsilon: GroupNorm epsilon.
        seed: optional seed of the stochastic depth.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import HATBlock
    >>> block = HATBlock(head_dim=8, grid_size=7, pool_ratio=2, expansion=4, kernel_size=3)
    >>> tuple(block(keras.ops.ones((1, 14, 14, 32))).shape)
    (1, 14, 14, 32)
    """

    def __init__(
        self,
        head_dim,
        grid_size,
        pool_ratio,
        expansion,
        kernel_size,
        drop_path_rate=0.0,
        epsilon=1e-6,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.head_dim = head_dim
        self.grid_size = grid_size
        self.pool_ratio = pool_ratio
        self.expansion = expansion
        self.kernel_size = kernel_size
        self.drop_path_rate = drop_path_rate
        self.epsilon = epsilon
        self.seed = seed
        policy = self.dtype_policy
        self.attn = HierarchicalAttention(
            head_dim, grid_size, pool_ratio, epsilon=epsilon, dtype=policy, name="attn"
        )
        self.ffn = ConvFFN(expansion, kernel_size, epsilon=epsilon, dtype=policy, name="ffn")
        self.drop_path = DropPath(drop_path_rate, seed=seed, dtype=policy, name="drop_path")

    def build(self, input_shape):
        self.attn.build(input_shape)
        self.ffn.build(input_shape)

    def call(self, x, training=None):
        branch = call_sublayer(self, self.attn, x, training=training)
        x = x + call_sublayer(self, self.drop_path, branch, training=training)
        branch = call_sublayer(self, self.ffn, x, training=training)
        return x + call_sublayer(self, self.drop_path, branch, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "head_dim": self.head_dim,
                "grid_size": self.grid_size,
                "pool_ratio": self.pool_ratio,
                "expansion": self.expansion,
                "kernel_size": self.kernel_size,
                "drop_path_rate": self.drop_path_rate,
                "epsilon": self.epsilon,
                "seed": self.seed,
            }
        )
        return config
