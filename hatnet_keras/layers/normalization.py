"""Group normalisation with a single group, channels-last, as HAT-Net uses it."""

import keras
from keras import ops

from hatnet_keras.layers import eager
from hatnet_keras.layers.kernels import (
    group_norm_one_group,
    jax_on_cpu,
    normalise_with_statistics,
)


def _torch_is_tracing():
    # F.layer_norm takes the sample shape as Python ints, which a trace with dynamic
    # sizes (torch.onnx.export) cannot give it.
    import torch

    return torch.jit.is_tracing()


@keras.saving.register_keras_serializable(package="hatnet_keras")
class GroupNorm(keras.layers.Layer):
    """GroupNorm with one group over a `(batch, height, width, channels)` map.

    Each sample is normalised over height, width and channels together (not per
    position, as a ViT's LayerNorm would), then scaled and shifted per channel.
    This is PyTorch's `nn.GroupNorm(1, C)` in channels-last layout. Statistics are
    computed in float32 whatever the compute dtype, so float16 maps cannot
    overflow them.

    Args:
        epsilon: added to the variance before the square root.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import GroupNorm
    >>> norm = GroupNorm()
    >>> tuple(norm(keras.ops.ones((2, 8, 8, 16))).shape)
    (2, 8, 8, 16)
    """

    # Neither its input nor its weights are autocast, so the autocast scope it runs in
    # cannot change its result (`call_sublayer` relies on this).
    _autocast_scope_free = True

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        # The weights stay float32 and are used as such: the arithmetic is float32.
        self.autocast = False

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("GroupNorm needs a known channel count.")
        self.gamma = self.add_weight(
            shape=(channels,), initializer="ones", name="gamma", autocast=False
        )
        self.beta = self.add_weight(
            shape=(channels,), initializer="zeros", name="beta", autocast=False
        )

    def call(self, inputs):
        if eager.is_torch_tensor(inputs) and not _torch_is_tracing():
            # One fused kernel (F.layer_norm) for the statistics, the normalisation and
            # the affine map, which is broadcast to a sample's shape for it; in float32,
            # as `ops.layer_normalization` would compute it. Called directly: each
            # `keras.ops` call costs the eager torch backend host time, and this
            # layer runs 78 times a forward pass in Small.
            import torch

            sample_shape = inputs.shape[1:]
            x = torch.nn.functional.layer_norm(
                eager.cast(inputs, "float32"),
                sample_shape,
                self.gamma.value.broadcast_to(sample_shape),
                self.beta.value.broadcast_to(sample_shape),
                self.epsilon,
            )
            return eager.cast(x, self.compute_dtype)
        x = ops.cast(inputs, "float32")
        gamma = ops.cast(self.gamma, "float32")
        beta = ops.cast(self.beta, "float32")
        if keras.backend.backend() == "torch":
            # Inside a trace (ONNX export): the formula as written, which the
            # exporter maps op for op.
            mean, variance = ops.moments(x, axes=(1, 2, 3), keepdims=True)
            x = (x - mean) * ops.rsqrt(variance + self.epsilon) * gamma + beta
        elif jax_on_cpu():
            # TensorFlow's XLA neither needs nor gains from it: see group_norm_one_group.
            x = group_norm_one_group(x, gamma, beta, self.epsilon)
        else:
            x, _, _ = normalise_with_statistics(x, gamma, beta, self.epsilon)
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
