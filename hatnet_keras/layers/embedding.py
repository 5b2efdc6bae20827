"""The stem and the downsampling layer between stages."""

import keras

from hatnet_keras.layers import eager
from hatnet_keras.layers.kernels import conv, silu
from hatnet_keras.layers.normalization import GroupNorm
from hatnet_keras.layers.sublayer import DirectCallOnTorch, call_sublayer


def _conv(layer, x):
    """`layer`'s stride-2 convolution, with its weights (the layer holds them), padded as
    PyTorch pads it: one pixel on all four sides (Keras "same" would pad only the
    bottom and right of an even size, and shift the grid)."""
    dtype = layer.compute_dtype
    return conv(
        x, eager.cast(layer.kernel, dtype), eager.cast(layer.bias, dtype), layer.strides,
        padding=1,
    )


def _halved(size):
    return None if size is None else (size + 1) // 2


def _padded(shape):
    """The shape of a map padded by one pixel on every side, for building the convolution."""
    return (shape[0], *(None if side is None else side + 2 for side in shape[1:3]), shape[3])


@keras.saving.register_keras_serializable(package="hatnet_keras")
class Stem(DirectCallOnTorch, keras.layers.Layer):
    """HAT-Net's stem (`patch_embed`): stride 4 from pixels to the first stage's width.

    3x3 stride-2 convolution to `stem_channels` -> GroupNorm -> SiLU -> 3x3
    stride-2 convolution to `channels`, both convolutions padded by one pixel
    on every side and with a bias.

    Args:
        channels: output channels (C1).
        stem_channels: channels after the first convolution.
        epsilon: GroupNorm epsilon.
        min_size: optional smallest accepted height and width; an image
            below it raises a `ValueError` where its size is known.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import Stem
    >>> stem = Stem(48)
    >>> tuple(stem(keras.ops.ones((1, 64, 64, 3))).shape)
    (1, 16, 16, 48)
    """

    def __init__(self, channels, stem_channels=16, epsilon=1e-6, min_size=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stem_channels = stem_channels
        self.epsilon = epsilon
        self.min_size = min_size
        policy = self.dtype_policy
        self.conv1 = keras.layers.Conv2D(stem_channels, 3, strides=2, dtype=policy, name="conv1")
        self.norm = GroupNorm(epsilon=epsilon, dtype=policy, name="norm")
        self.conv2 = keras.layers.Conv2D(channels, 3, strides=2, dtype=policy, name="conv2")

    def build(self, input_shape):
        hidden_shape = (input_shape[0], _halved(input_shape[1]), _halved(input_shape[2]), self.stem_channels)
        self.conv1.build(_padded(input_shape))
        self.norm.build(hidden_shape)
        self.conv2.build(_padded(hidden_shape))

    def call(self, x):
        if self.min_size is not None:
            self._check_size(x.shape[1:3])
        x = silu(call_sublayer(self, self.norm, _conv(self.conv1, x)))
        return _conv(self.conv2, x)

    def _check_size(self, size):
        if any(side is not None and side < self.min_size for side in size):
            raise ValueError(
                f"Image size {tuple(size)} is too small: this model takes any height and "
                f"width of at least {self.min_size} pixels."
            )

    def compute_output_shape(self, input_shape):
        return (
            input_shape[0],
            _halved(_halved(input_shape[1])),
            _halved(_halved(input_shape[2])),
            self.channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "stem_channels": self.stem_channels,
                "epsilon": self.epsilon,
                "min_size": self.min_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="hatnet_keras")
class Downsample(DirectCallOnTorch, keras.layers.Layer):
    """Downsampling between stages (`ds2`..`ds4`): 3x3 stride-2 conv, then GroupNorm.

    Args:
        channels: output channels.
        epsilon: GroupNorm epsilon.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import Downsample
    >>> down = Downsample(96)
    >>> tuple(down(keras.ops.ones((1, 16, 16, 48))).shape)
    (1, 8, 8, 96)
    """

    def __init__(self, channels, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.epsilon = epsilon
        policy = self.dtype_policy
        self.conv = keras.layers.Conv2D(channels, 3, strides=2, dtype=policy, name="conv")
        self.norm = GroupNorm(epsilon=epsilon, dtype=policy, name="norm")

    def build(self, input_shape):
        self.conv.build(_padded(input_shape))
        self.norm.build(self.compute_output_shape(input_shape))

    def call(self, x):
        return call_sublayer(self, self.norm, _conv(self.conv, x))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], _halved(input_shape[1]), _halved(input_shape[2]), self.channels)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "epsilon": self.epsilon})
        return config
