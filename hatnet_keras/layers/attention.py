"""H-MHSA, the hierarchical multi-head self-attention of HAT-Net, in its steps.

* `LocalWindowAttention`: the local step, softmax attention inside G x G windows.
* `MergePooling`: the merge step, average pooling by r, then GroupNorm and the
  key/value projection of the pooled tokens.
* `GlobalAttention`: the global step, every position attending over a set of
  tokens (the pooled ones, or all positions in the plain global case, G = 1).
* `HierarchicalAttention`: the whole H-MHSA module of one block.

Maps of any size are accepted. The local step pads a map to a multiple of G and
masks the padded keys out, so padding never reaches a real position; the merge
step averages a partial window at the bottom or right edge over the pixels it
covers. At sizes divisible by G and r none of this happens and the arithmetic is
the reference's.

Queries, keys and values are laid out heads-first, (batch, heads, tokens,
head_dim), each cut from its projection by one transpose. Attention runs through
`keras.ops.dot_product_attention`, so a backend's fused or flash kernel is used
where it has one, or as two batched matrix products where those run better
(see `attend`); the softmax is float32 either way. On the eager torch backend the
layout calls and the attention skip Keras' per-op dispatch (`eager`).
"""

import keras
from keras import ops

from hatnet_keras.layers import eager
from hatnet_keras.layers.kernels import (
    PointwiseDense,
    attention_weights,
    is_half_precision,
    jax_on_cpu,
    pinned_attention,
    pins_for_xla_cpu,
    window_average,
)
from hatnet_keras.layers.normalization import GroupNorm
from hatnet_keras.layers.sublayer import call_sublayer


def _padding_to_multiple(size, multiple):
    """Padding that brings `size` (an int, or a tensor in a dynamic graph) to a multiple."""
    return (-size) % multiple


def _is_statically_zero(value):
    return isinstance(value, int) and value == 0


def _pad_bottom_right(x, pad_height, pad_width):
    return ops.pad(x, [[0, 0], [0, pad_height], [0, pad_width], [0, 0]])


def _batched_products_run_best():
    """True where attention is best spelled out as two batched matrix products.

    TensorFlow has no fused attention kernel: its `dot_product_attention` is the
    same products with a transpose of every operand in front (in a graph, the
    stage-1 local step of HAT-Net-Small at batch 16 took 80 ms that way, 52 ms
    this way). On XLA:CPU both run about as fast, but JAX's
    `dot_product_attention` cannot compile half precision there. Torch's fused
    kernel and cuDNN's flash attention keep the `dot_product_attention` path.
    """
    return keras.backend.backend() == "tensorflow" or jax_on_cpu()


def _to_tokens_first(x):
    return eager.transpose(x, (0, 2, 1, 3))


def flash_attention_setting(query_tokens, key_tokens, training=None):
    """`flash_attention` for `keras.ops.dot_product_attention`: None (the backend decides) or False.

    JAX's cuDNN attention refuses an odd number of query or key tokens under
    autodiff (HAT-Net's 7 x 7 windows and pooled maps have 49), after which
    Keras logs the refusal with a traceback at every trace and runs XLA's
    attention. In training such steps go to XLA's attention directly; inference
    keeps cuDNN, which takes any length.

    Example (on JAX; every other backend gets None):
    >>> import keras
    >>> from hatnet_keras.layers.attention import flash_attention_setting
    >>> odd = flash_attention_setting(49, 49, training=True)
    >>> even = flash_attention_setting(64, 64, training=True)
    >>> (odd, even) == ((False, None) if keras.backend.backend() == "jax" else (None, None))
    True
    """
    if keras.backend.backend() != "jax" or not training:
        return None
    odd = any(n is not None and n % 2 for n in (query_tokens, key_tokens))
    return False if odd else None


def _half_precision_gradient_on_cpu(*tensors):
    """True for half-precision torch tensors on a CPU of which autograd will take a gradient."""
    import torch

    return (
        tensors[0].device.type == "cpu"
        and is_half_precision(tensors[0].dtype)
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
    )


def attend(query, key, value, scale, mask=None, training=None):
    """Softmax attention on heads-first `(batch, heads, tokens, head_dim)` tensors.

    The logits are scaled and the softmax taken in float32 whatever the compute
    dtype; `mask` (broadcast to `(batch, heads, query tokens, key tokens)`) is
    true where a key may be attended to. Goes through
    `keras.ops.dot_product_attention` (fused and flash kernels) where a backend
    has such a kernel; eager torch tensors go straight to PyTorch's
    `scaled_dot_product_attention`, which takes this layout (in float32 for
    half-precision tensors on a CPU that need a gradient). `training` picks
    the kernels that can be differentiated (`flash_attention_setting`). JAX on
    a CPU, and TensorFlow under XLA on a CPU, take `pinned_attention`, the two
    batched products with their gradient written out.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.attention import attend
    >>> q = keras.ops.ones((2, 4, 9, 8))  # 2 maps, 4 heads, 9 tokens, head_dim 8
    >>> tuple(attend(q, q, q, scale=8**-0.5).shape)
    (2, 4, 9, 8)
    """
    if _batched_products_run_best():
        if pins_for_xla_cpu():
            return pinned_attention(query, key, value, scale, mask=mask)
        weights = ops.cast(attention_weights(query, key, scale, mask), value.dtype)
        return ops.einsum("bnts,bnsh->bnth", weights, value)
    if eager.is_torch_tensor(query):
        # PyTorch's kernel takes heads-first tensors as they are and picks its flash
        # kernel where it can. Keras' `dot_product_attention` would take them
        # tokens-first, transpose them back and copy each to a contiguous tensor.
        import torch

        if mask is not None:
            mask = ops.convert_to_tensor(mask, dtype="bool")
        if _half_precision_gradient_on_cpu(query, key, value):
            # PyTorch's CPU flash attention differentiates bfloat16 about 7x slower than
            # float32 (HAT-Net-Small at batch 16 on a 2-core AMD EPYC, Zen 5: 1.33 s of
            # a 2.58 s training step against 0.18 s); its forward pass is as fast in
            # either. Computed in float32 and rounded to the compute dtype at the end.
            out = torch.nn.functional.scaled_dot_product_attention(
                query.float(), key.float(), value.float(), attn_mask=mask, scale=scale
            )
            return out.to(query.dtype)
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=scale
        )
    out = ops.dot_product_attention(
        _to_tokens_first(query), _to_tokens_first(key), _to_tokens_first(value),
        mask=mask, scale=scale,
        flash_attention=flash_attention_setting(query.shape[2], key.shape[2], training),
    )
    return _to_tokens_first(out)


def attend_with_weights(query, key, value, scale, mask=None):
    """`attend`, spelled out, also returning the attention weights; for inspection only.

    Returns `(output, weights)`: the output as `attend` gives it and the float32
    softmax weights `(batch, heads, query tokens, key tokens)`, whose rows sum to 1
    (masked keys get exactly 0). The default path of the layers never comes here.
    """
    weights = attention_weights(
        ops.cast(query, "float32"), ops.cast(key, "float32"), scale, mask
    )
    output = ops.einsum("bnts,bnsh->bnth", ops.cast(weights, value.dtype), value)
    return output, weights


def _unpack(packed, count):
    """The `count` tensors stacked along the first axis of `packed`, split rather than indexed.

    Autodiff turns a split into one concatenation of the parts' gradients, where
    indexing the parts gives one zero-padded full-size copy per part, then summed
    (on JAX on a CPU, the pads of the local step's q, k and v took 77 ms of a
    training step of HAT-Net-Small at batch 16).
    """
    return [eager.squeeze(part, axis=0) for part in eager.split(packed, count, axis=0)]


def _check_heads(channels, num_heads, what):
    if channels % num_heads:
        raise ValueError(
            f"{what}: {channels} channels cannot be split into {num_heads} heads."
        )


@keras.saving.register_keras_serializable(package="hatnet_keras")
class LocalWindowAttention(keras.layers.Layer):
    """The local step of H-MHSA: attention inside non-overlapping G x G windows.

    Takes the fused projection `qkv` of shape `(batch, height, width, 3 * C)`,
    laid out `[q | k | v]` with each part `[head 0 | head 1 | ...]`, and returns
    `(batch, height, width, C)`. A map whose sides are not multiples of
    `grid_size` is padded at the bottom and right; padded keys are masked out of
    every softmax and padded queries are cropped away.

    Args:
        grid_size: window side G.
        num_heads: number of attention heads; C must be a multiple of it.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import LocalWindowAttention
    >>> local = LocalWindowAttention(grid_size=7, num_heads=2)
    >>> tuple(local(keras.ops.ones((1, 14, 10, 3 * 16))).shape)
    (1, 14, 10, 16)
    """

    def __init__(self, grid_size, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = grid_size
        self.num_heads = num_heads

    def build(self, input_shape):
        channels = input_shape[-1] // 3
        _check_heads(channels, self.num_heads, self.name)
        self.channels = channels
        self.head_dim = channels // self.num_heads
        self.scale = self.head_dim**-0.5

    def call(self, qkv, return_attention_scores=False, training=None):
        """With `return_attention_scores`, returns `(output, weights)`, the float32
        weights `(batch, rows * cols windows, heads, G * G, G * G)` (see `attend_with_weights`)."""
        g = self.grid_size
        batch, height, width = ops.shape(qkv)[:3]
        pad_height = _padding_to_multiple(height, g)
        pad_width = _padding_to_multiple(width, g)
        padded = not (_is_statically_zero(pad_height) and _is_statically_zero(pad_width))
        if padded:
            qkv = _pad_bottom_right(qkv, pad_height, pad_width)
        rows = (height + pad_height) // g
        cols = (width + pad_width) // g

        # At most 6-D transposes: LiteRT has no builtin for more dimensions. The
        # windows are laid out (heads, windows, tokens, head_dim): heads-first with
        # the two batch axes swapped, which attention does not mind.
        heads, head_dim = self.num_heads, self.head_dim
        windows = eager.reshape(qkv, (-1, g, cols, g, 3 * heads, head_dim))
        # (batch * rows, G, cols, G, q/k/v x heads, head_dim)
        #   -> (q/k/v x heads, batch * rows, cols, G, G, head_dim)
        windows = eager.transpose(windows, (4, 0, 2, 1, 3, 5))
        windows = eager.reshape(windows, (3, heads, -1, g * g, head_dim))
        query, key, value = _unpack(windows, 3)

        mask = None
        if padded:
            mask = self._key_mask(batch, height, width, pad_height, pad_width)
        if return_attention_scores:
            out, weights = attend_with_weights(query, key, value, self.scale, mask=mask)
        else:
            out = attend(query, key, value, self.scale, mask=mask, training=training)

        out = eager.reshape(out, (heads, -1, cols, g, g, head_dim))
        out = eager.transpose(out, (1, 3, 2, 4, 0, 5))  # (batch * rows, G, cols, G, heads, head_dim)
        out = eager.reshape(out, (-1, rows * g, cols * g, self.channels))
        if padded:
            out = out[:, :height, :width, :]
        if return_attention_scores:
            weights = eager.reshape(weights, (heads, -1, rows * cols, g * g, g * g))
            return out, eager.transpose(weights, (1, 2, 0, 3, 4))
        return out

    def _key_mask(self, batch, height, width, pad_height, pad_width):
        """(1, batch * windows, 1, G * G) booleans, true where a key is a real pixel."""
        g = self.grid_size
        real = _pad_bottom_right(
            ops.ones((1, height, width, 1), dtype="float32"), pad_height, pad_width
        )
        rows = (height + pad_height) // g
        cols = (width + pad_width) // g
        real = eager.reshape(real, (rows, g, cols, g))
        real = eager.transpose(real, (0, 2, 1, 3))
        real = eager.reshape(real, (1, -1, g * g))
        real = ops.tile(real, (batch, 1, 1))
        return eager.reshape(real, (1, -1, 1, g * g)) > 0.5

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], input_shape[3] // 3)

    def get_config(self):
        config = super().get_config()
        config.update({"grid_size": self.grid_size, "num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package="hatnet_keras")
class MergePooling(keras.layers.Layer):
    """The merge step of H-MHSA: pool by `pool_ratio`, normalise, project to keys and values.

    Average pooling with kernel and stride r over `(batch, height, width, C)`;
    when a side is not a multiple of r, the last window covers fewer pixels and
    is averaged over those, so that every pixel is pooled into some token. The
    pooled map goes through GroupNorm (`ds_norm`) and a 1x1 projection (`kv`)
    to `2 * C` channels laid out `[k | v]`.

    Args:
        pool_ratio: pooling kernel and stride r.
        epsilon: GroupNorm epsilon.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import MergePooling
    >>> merge = MergePooling(pool_ratio=4)
    >>> tuple(merge(keras.ops.ones((1, 28, 30, 32))).shape)
    (1, 7, 8, 64)
    """

    def __init__(self, pool_ratio, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.pool_ratio = pool_ratio
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.ds_norm = GroupNorm(
            epsilon=self.epsilon, dtype=self.dtype_policy, name="ds_norm"
        )
        self.kv = PointwiseDense(2 * channels, dtype=self.dtype_policy, name="kv")
        pooled_shape = self._pooled_shape(input_shape)
        self.ds_norm.build(pooled_shape)
        self.kv.build(pooled_shape)

    def call(self, x, training=None):
        x = call_sublayer(self, self.ds_norm, self.pool(x))
        return call_sublayer(self, self.kv, x, training=training)

    def pool(self, x):
        r = self.pool_ratio
        if r == 1:
            return x
        _, height, width = ops.shape(x)[:3]
        pad_height = _padding_to_multiple(height, r)
        pad_width = _padding_to_multiple(width, r)
        if _is_statically_zero(pad_height) and _is_statically_zero(pad_width):
            return window_average(x, r)
        # Mean of the covered pixels = mean of the zero-padded window / covered fraction.
        covered = _pad_bottom_right(
            ops.ones((1, height, width, 1), dtype=self.compute_dtype),
            pad_height,
            pad_width,
        )
        x = _pad_bottom_right(x, pad_height, pad_width)
        return window_average(x, r) / window_average(covered, r)

    def _pooled_shape(self, input_shape):
        def pooled(size):
            return None if size is None else -(-size // self.pool_ratio)

        return (input_shape[0], pooled(input_shape[1]), pooled(input_shape[2]), input_shape[3])

    def compute_output_shape(self, input_shape):
        return (*self._pooled_shape(input_shape)[:3], 2 * input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"pool_ratio": self.pool_ratio, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="hatnet_keras")
class GlobalAttention(keras.layers.Layer):
    """The global step of H-MHSA: every position attends over a set of tokens.

    `call(query, key_value)` takes queries `(batch, height, width, C)` and keys
    and values `(batch, h, w, 2 * C)` laid out `[k | v]`, and returns
    `(batch, height, width, C)`. With pooled keys this is the global step of
    H-MHSA; with keys and values from the same map (G = 1) it is plain global
    self-attention.

    Args:
        num_heads: number of attention heads; C must be a multiple of it.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import GlobalAttention
    >>> global_step = GlobalAttention(num_heads=4)
    >>> q = keras.ops.ones((2, 14, 14, 32))
    >>> kv = keras.ops.ones((2, 7, 7, 64))
    >>> tuple(global_step(q, kv).shape)
    (2, 14, 14, 32)
    """

    def __init__(self, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def build(self, query_shape, key_value_shape=None):
        channels = query_shape[-1]
        _check_heads(channels, self.num_heads, self.name)
        self.head_dim = channels // self.num_heads
        self.scale = self.head_dim**-0.5

    def call(self, query, key_value, return_attention_scores=False, training=None):
        """With `return_attention_scores`, returns `(output, weights)`, the float32
        weights `(batch, heads, height * width, h * w)` (see `attend_with_weights`)."""
        query_shape = ops.shape(query)
        batch = query_shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        query = _to_tokens_first(eager.reshape(query, (batch, -1, heads, head_dim)))
        key_value = eager.reshape(key_value, (batch, -1, 2, heads, head_dim))
        # -> (k/v, batch, heads, tokens, head_dim)
        key_value = eager.transpose(key_value, (2, 0, 3, 1, 4))
        key, value = _unpack(key_value, 2)
        weights = None
        if return_attention_scores:
            out, weights = attend_with_weights(query, key, value, self.scale)
        else:
            out = attend(query, key, value, self.scale, training=training)
        out = eager.reshape(_to_tokens_first(out), query_shape)
        return out if weights is None else (out, weights)

    def compute_output_shape(self, query_shape, key_value_shape=None):
        return tuple(query_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads})
        return config


@keras.saving.register_keras_serializable(package="hatnet_keras")
class HierarchicalAttention(keras.layers.Layer):
    """H-MHSA: the attention module of a HAT-Net block (`attn` in the reference).

    With `grid_size > 1`: `qkv` from the normalised input, the local step inside
    G x G windows, `g = GroupNorm(x + local)`, then every position of `g`
    attends over `g` pooled by `pool_ratio`, plus `g`. With `grid_size == 1`:
    plain global self-attention. Both end in a 1x1 projection with bias.

    `call(x, return_attention_scores=True)` returns `(output, scores)` for
    inspection, computed through a spelled-out float32 softmax (the default
    `call(x)` is untouched by it). `scores` holds the softmax weights:
    `scores["local"]`, `(batch, rows * cols, heads, G * G, G * G)`, one G x G
    window per entry of the second axis (windows in row-major order over the
    map padded to a multiple of G; padded keys get weight 0), query and key
    tokens row-major inside the window; `scores["global"]`,
    `(batch, heads, height * width, tokens)`, every position over the
    `ceil(height / r) * ceil(width / r)` pooled tokens, or over all
    `height * width` positions when `grid_size == 1`, which has no "local".

    Args:
        head_dim: channels per head; the input's channel count must be a multiple.
        grid_size: window side G of the local step; 1 for plain global attention.
        pool_ratio: pooling ratio r of the merge step (unused when `grid_size == 1`).
        epsilon: GroupNorm epsilon.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import HierarchicalAttention
    >>> attn = HierarchicalAttention(head_dim=8, grid_size=7, pool_ratio=2)
    >>> tuple(attn(keras.ops.ones((1, 14, 14, 32))).shape)
    (1, 14, 14, 32)
    """

    def __init__(self, head_dim, grid_size, pool_ratio, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.head_dim = head_dim
        self.grid_size = grid_size
        self.pool_ratio = pool_ratio
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.head_dim:
            raise ValueError(
                f"{self.name}: {channels} channels is not a multiple of "
                f"head_dim={self.head_dim}."
            )
        num_heads = channels // self.head_dim
        self.channels = channels
        policy = self.dtype_policy

        def norm(name):
            return GroupNorm(epsilon=self.epsilon, dtype=policy, name=name)

        self.norm = norm("norm")
        self.qkv = PointwiseDense(3 * channels, dtype=policy, name="qkv")
        self.proj = PointwiseDense(channels, dtype=policy, name="proj")
        self.global_attention = GlobalAttention(
            num_heads, dtype=policy, name="global_attention"
        )
        self.norm.build(input_shape)
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        if self.grid_size > 1:
            self.local_attention = LocalWindowAttention(
                self.grid_size, num_heads, dtype=policy, name="local_attention"
            )
            self.grid_norm = norm("grid_norm")
            self.merge = MergePooling(
                self.pool_ratio, epsilon=self.epsilon, dtype=policy, name="merge"
            )
            self.q = PointwiseDense(channels, dtype=policy, name="q")
            self.local_attention.build((*input_shape[:3], 3 * channels))
            self.grid_norm.build(input_shape)
            self.merge.build(input_shape)
            self.q.build(input_shape)
        self.global_attention.build(input_shape)

    def call(self, x, return_attention_scores=False, training=None):
        if return_attention_scores:
            return self._call_with_attention_scores(x)

        def sub(layer, *args):
            return call_sublayer(self, layer, *args, training=training)

        qkv = sub(self.qkv, call_sublayer(self, self.norm, x))
        if self.grid_size == 1:
            # Split, not sliced, for the gradient's sake (see `_unpack`).
            query, key_value = eager.split(qkv, [self.channels], axis=-1)
            out = sub(self.global_attention, query, key_value)
            return sub(self.proj, out)
        g = call_sublayer(self, self.grid_norm, x + sub(self.local_attention, qkv))
        out = sub(self.global_attention, sub(self.q, g), sub(self.merge, g))
        return sub(self.proj, out + g)

    def _call_with_attention_scores(self, x):
        # `call` again, through the spelled-out softmax that also returns the weights.
        qkv = self.qkv(self.norm(x))
        if self.grid_size == 1:
            out, global_weights = self.global_attention(
                qkv[..., : self.channels], qkv[..., self.channels :], return_attention_scores=True
            )
            return self.proj(out), {"global": global_weights}
        local, local_weights = self.local_attention(qkv, return_attention_scores=True)
        g = self.grid_norm(x + local)
        out, global_weights = self.global_attention(
            self.q(g), self.merge(g), return_attention_scores=True
        )
        return self.proj(out + g), {"local": local_weights, "global": global_weights}

    def compute_output_spec(self, x, return_attention_scores=False, training=None):
        output = super().compute_output_spec(x)
        if not return_attention_scores:
            return output
        batch, height, width, channels = x.shape

        def count(size, step):  # windows or pooled cells along a side
            return None if size is None else -(-size // step)

        def product(a, b):
            return None if a is None or b is None else a * b

        heads = channels // self.head_dim
        positions = product(height, width)
        if self.grid_size == 1:
            shapes = {"global": (batch, heads, positions, positions)}
        else:
            g, r = self.grid_size, self.pool_ratio
            shapes = {
                "local": (batch, product(count(height, g), count(width, g)), heads, g * g, g * g),
                "global": (batch, heads, positions, product(count(height, r), count(width, r))),
            }
        return output, {
            key: keras.KerasTensor(shape, dtype="float32") for key, shape in shapes.items()
        }

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "head_dim": self.head_dim,
                "grid_size": self.grid_size,
                "pool_ratio": self.pool_ratio,
                "epsilon": self.epsilon,
            }
        )
        return config
