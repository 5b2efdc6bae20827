"""The convolutional feed-forward network of a HAT-Net block."""

import keras

from hatnet_keras.layers import eager
from hatnet_keras.layers.normalization import GroupNorm
from hatnet_keras.layers.kernels import PointwiseDense, silu_depthwise_silu
from hatnet_keras.layers.sublayer import call_sublayer


@keras.saving.register_keras_serializable(package="hatnet_keras")
class ConvFFN(keras.layers.Layer):
    """Inverted residual used as a block's feed-forward network (`conv` in the reference).

    GroupNorm -> 1x1 expansion to `expansion * C` (no bias) -> SiLU ->
    depthwise `kernel_size` x `kernel_size` convolution (no bias) -> SiLU ->
    1x1 projection back to C (no bias) -> GroupNorm. The input and output are
    `(batch, height, width, C)`.

    Args:
        expansion: hidden width as a multiple of the input channels.
        kernel_size: odd side of the depthwise convolution.
        epsilon: GroupNorm epsilon.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import ConvFFN
    >>> ffn = ConvFFN(expansion=4, kernel_size=3)
    >>> tuple(ffn(keras.ops.ones((2, 14, 14, 32))).shape)
    (2, 14, 14, 32)
    """

    def __init__(self, expansion, kernel_size, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.expansion = expansion
        self.kernel_size = kernel_size
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = self.expansion * channels
        policy = self.dtype_policy
        self.norm = GroupNorm(epsilon=self.epsilon, dtype=policy, name="norm")
        self.expand = PointwiseDense(
            hidden, use_bias=False, dtype=policy, name="expand"
        )
        # Stride 1 with an odd kernel: "same" pads k // 2 on every side, as the reference.
        self.depthwise = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", use_bias=False, dtype=policy, name="depthwise"
        )
        self.project = PointwiseDense(
            channels, use_bias=False, dtype=policy, name="project"
        )
        self.project_norm = GroupNorm(
            epsilon=self.epsilon, dtype=policy, name="project_norm"
        )
        hidden_shape = (*input_shape[:3], hidden)
        self.norm.build(input_shape)
        self.expand.build(input_shape)
        self.depthwise.build(hidden_shape)
        self.project.build(hidden_shape)
        self.project_norm.build(input_shape)

    def call(self, x, training=None):
        x = call_sublayer(self, self.norm, x)
        x = call_sublayer(self, self.expand, x, training=training)
        # The layer holds the kernel; SiLU, convolution, SiLU are formulated per backend.
        kernel = eager.cast(self.depthwise.kernel, self.compute_dtype)
        x = silu_depthwise_silu(x, kernel)
        x = call_sublayer(self, self.project, x, training=training)
        return call_sublayer(self, self.project_norm, x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "expansion": self.expansion,
                "kernel_size": self.kernel_size,
                "epsilon": self.epsilon,
            }
        )
        return config
