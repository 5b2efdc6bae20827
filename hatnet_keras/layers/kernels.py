"""Operations written in the formulation each backend runs best, in `keras.ops`.

* XLA:CPU (JAX, and TensorFlow under `jit_compile=True`) lowers a depthwise
  convolution to a generic loop about 8x slower than PyTorch's, and its gradient
  over 15x slower, while it fuses slices, multiplies and adds into one fast loop:
  there the depthwise convolution is k * k shifted multiply-adds. Its kernel
  gradient sums all k * k windows in one variadic reduction, the one place
  where `jax.lax` and TensorFlow's XLA op are called, as keras.ops has none.
* In training, XLA:CPU's autodiff of a Dense layer over a map transposes the
  output gradient with everything that produced it fused into the transpose,
  and TensorFlow's XLA:CPU sums over positions in slow fused loops; there the
  gradients are written out (`channel_matmul`, `sum_over_positions`), and
  average pooling is a mean over reshaped windows (`window_average`), whose
  gradient is a broadcast rather than a generic windowed sum.
* XLA:CPU runs those shifted multiply-adds in half precision op by op, about
  ten times slower than in float32: under a mixed-precision policy the conv FFN's
  SiLU, depthwise convolution and SiLU are computed in float32 and rounded once,
  and so is the TensorFlow graph's compiled SiLU gradient (`silu`).
* Under JAX on a CPU, GroupNorm's gradient is written out
  (`group_norm_one_group`): with autodiff's, XLA:CPU re-evaluated the gradient
  of a stage's residual stream in every consumer instead of writing it out.
* Under XLA on a CPU (JAX, and TensorFlow with `jit_compile=True`), the conv
  FFN's SiLU, depthwise convolution and SiLU are one function with its gradient
  written out and its intermediate maps pinned (`pinned_silu_depthwise_silu`):
  left to itself, XLA:CPU wrote out more maps and computed the second SiLU's
  gradient once per tap in the convolution's. TensorFlow has the optimisation
  barrier that pins them only in its private `tf2xla` module (`_pinned`).
* Under XLA on a CPU, attention's gradient is written out with the softmax
  weights and the logits' gradient transposed and pinned (`pinned_attention`):
  XLA:CPU ran autodiff's key and value gradients, which contract the query
  tokens of both operands, as its own slow batched products.
* Under JAX on a CPU, the stem's and downsampling layers' k x k convolutions are
  one matrix product of their `patches` with the kernel: XLA:CPU's convolution
  and its gradients were slower.
* TensorFlow outside XLA runs each op of a gradient on its own, and its
  sigmoid is slow: autodiff of SiLU took a sigmoid and four more passes over
  each expanded map of the conv FFN. There SiLU's gradient is one small
  function that XLA compiles into a single pass (`silu`).
* The torch backend's channels-last convolution copies its input to channels
  first and back again; a channels-first call on a transposed view lets PyTorch
  run its channels-last kernel on the map as it lies in memory, with no copy.
  The same 1x1 convolution also beats a matrix product for a Dense layer over a
  large map there (`PointwiseDense`).
"""

import functools

import keras
from keras import ops

from hatnet_keras.layers import eager


def jax_on_cpu():
    """True when the backend is JAX and its default device is a CPU."""
    return (
        keras.backend.backend() == "jax"
        and keras.distribution.list_devices()[0].lower().startswith("cpu")
    )


def compiling_for_xla_cpu():
    """True while tracing a computation that XLA compiles for a CPU.

    JAX always compiles with XLA; TensorFlow does inside `jit_compile=True`
    functions (for example a model compiled with `jit_compile=True`).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return jax_on_cpu()
    if backend == "tensorflow":
        import tensorflow as tf

        return _tensorflow_in_xla() and not tf.config.list_logical_devices("GPU")
    return False


def is_half_precision(dtype):
    """True for bfloat16 and float16, as any backend names them.

    Example:
    >>> from hatnet_keras.layers.kernels import is_half_precision
    >>> is_half_precision("bfloat16"), is_half_precision("float32")
    (True, False)
    """
    return keras.backend.standardize_dtype(dtype) in ("bfloat16", "float16")


def _tensorflow_in_xla():
    """True while TensorFlow traces a function that XLA compiles (`jit_compile=True`)."""
    import tensorflow as tf

    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TensorFlow without this helper
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _shifted_windows(padded, size):
    """The k * k windows of a map padded by k // 2 on each side, as (i, j, window)."""
    pad = size // 2
    for i in range(size):
        rows = slice(i, i - 2 * pad or None)
        for j in range(size):
            yield i, j, padded[:, rows, j : j - 2 * pad or None, :]


def _pad_for(size):
    pad = size // 2
    return [[0, 0], [pad, pad], [pad, pad], [0, 0]]


def _taps(padded, kernel):
    """The depthwise convolution of a map padded by k // 2 on each side, as k * k multiply-adds."""
    out = None
    for i, j, window in _shifted_windows(padded, kernel.shape[0]):
        tap = window * kernel[i, j, :, 0]
        out = tap if out is None else out + tap
    return out


def _shifted_multiply_add(x, kernel):
    return _taps(ops.pad(x, _pad_for(kernel.shape[0])), kernel)


def sum_over_positions(x):
    """The sum of `x` over every axis but the last (the channels).

    TensorFlow's XLA:CPU runs a sum over the leading axes, and a product with
    one column of ones, as loops with the producers of `x` fused in: about
    12 and 20 ms for the product of an 8x14x14x1280 map with a window of
    another. With two columns of ones it is a matrix product whose operand is
    first computed in one vectorised pass: about 2 ms.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.sum(x, axis=tuple(range(len(x.shape) - 1)))
    flat = _positions_by_channels(x)
    ones = ops.ones_like(flat[:, :1])
    two_columns = ops.concatenate([ones, ones], axis=1)
    return ops.matmul(ops.transpose(two_columns), flat)[0]


def _rows_per_group(height):
    # The largest divisor of the height up to 8: more rows per group make the fused
    # loop longer than the time it saves (measured on 8x56x56x512: 7, 8 and 14 rows
    # were alike, 28 slower).
    return max(r for r in range(1, 9) if height % r == 0)


def _window_products_summed(x, padded, size):
    """`(k * k, C)`: for each window of `padded`, the sum over positions of x * window.

    Summed window by window, XLA:CPU writes each window out before its sum, k * k
    copies of the map. Here each window's products are first added over groups
    of rows, whose output is a fraction of the map, and those partial sums are
    summed. On JAX and under TensorFlow's XLA one variadic reduction gives the
    partial sums of all windows in one pass (`_row_group_sums_in_one_pass`);
    elsewhere each window takes its own fused loop (the kernel gradient of an
    8x56x56x512 map under XLA: 80-110 ms window by window, 60-80 ms in row
    groups, 27-32 ms in one pass).
    """
    height, width, channels = x.shape[1:]
    # Sizes unknown while tracing, or a height with no divisor from 2 to 8: window by window.
    rows = 1 if None in (height, width) else _rows_per_group(height)
    if rows == 1:
        return ops.stack(
            [sum_over_positions(x * window) for _, _, window in _shifted_windows(padded, size)]
        )
    shape = (-1, height // rows, rows, width, channels)
    partial_sums = _row_group_sums_in_one_pass(x, padded, size, shape)
    if partial_sums is not None:
        # Summed one by one: XLA:CPU would copy them into a concatenation first.
        return ops.stack([sum_over_positions(partial) for partial in partial_sums])
    grouped_x = ops.reshape(x, shape)
    partial_sums = []
    for _, _, window in _shifted_windows(padded, size):
        grouped_window = ops.reshape(window, shape)
        partial = None
        for row in range(rows):
            product = grouped_x[:, :, row] * grouped_window[:, :, row]
            partial = product if partial is None else partial + product
        partial_sums.append(partial)
    # (batch, height / rows, width, k * k * C): one sum over positions for all windows.
    stacked = ops.concatenate(partial_sums, axis=-1)
    return ops.reshape(sum_over_positions(stacked), (size * size, channels))


def _row_group_sums_in_one_pass(x, padded, size, shape):
    """Each window's products with x summed over groups of rows, all windows in one pass.

    One variadic reduction takes the k * k products as its operands, so XLA:CPU
    reads x and the padded map once and writes k * k partial sums, where the
    keras.ops form makes one loop per window: k * k passes over both maps. The
    kernel gradient of an 8x56x56x512 map: 62-86 -> 27-32 ms on JAX and 61-69 ->
    27-33 ms on TensorFlow + XLA; of 8x14x14x2560 on JAX: 27 -> 12-14 ms.

    keras.ops has no reduction with several operands, so this takes JAX's
    `lax.reduce` or TensorFlow's XLA op. Returns None where neither applies
    (another backend, or TensorFlow outside XLA, which has no kernel for it).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        from jax import lax

        def reduce(operands, zeros):
            return lax.reduce(operands, zeros, _add_pairwise, (2,))
    elif backend == "tensorflow" and compiling_for_xla_cpu():
        try:
            from tensorflow.compiler.tf2xla.python import xla
        except ImportError:  # pragma: no cover - a TensorFlow without the XLA ops
            return None
        reducer = _tensorflow_pairwise_sum(size * size, x.dtype)

        def reduce(operands, zeros):
            return xla.variadic_reduce(operands, zeros, dimensions_to_reduce=[2], reducer=reducer)
    else:
        return None
    products = [
        ops.reshape(x * window, shape) for _, _, window in _shifted_windows(padded, size)
    ]
    return list(reduce(products, [ops.zeros((), x.dtype)] * len(products)))


def _add_pairwise(accumulated, values):
    return [a + v for a, v in zip(accumulated, values)]


@functools.lru_cache(maxsize=None)
def _tensorflow_pairwise_sum(count, dtype):
    """TensorFlow's reducer for `count` operands: a function of 2 * count scalars."""
    import tensorflow as tf

    @tf.function
    def add(*scalars):
        return _add_pairwise(scalars[:count], scalars[count:])

    return add.get_concrete_function(*[tf.TensorSpec((), dtype)] * (2 * count))


def _depthwise_kernel_gradient(x, padded_upstream, kernel):
    """The kernel gradient of a "same" depthwise convolution of `x`, from its padded output gradient."""
    # Window (i, j) of the gradient pairs with tap (k-1-i, k-1-j): the taps come out reversed.
    reversed_taps = _window_products_summed(x, padded_upstream, kernel.shape[0])
    return ops.reshape(ops.flip(reversed_taps, axis=0), ops.shape(kernel))


def shifted_depthwise_conv(x, kernel):
    """Stride-1 "same" depthwise convolution written as shifted multiply-adds.

    Equal to `keras.ops.depthwise_conv(x, kernel, 1, "same")` for an odd kernel
    side k with depth multiplier 1: the input is padded by k // 2 on each side and
    each of the k * k taps adds a shifted copy of it times one row of the kernel.
    The gradient is written the same way: left to autodiff, XLA:CPU materialises
    one padded copy of the output gradient per tap and sums them (a JAX training
    step of HAT-Net-Small at batch 8 took 13.5 s that way, 7.9 s this way).

    Args:
        x: `(batch, height, width, channels)`.
        kernel: `(k, k, channels, 1)`.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import shifted_depthwise_conv
    >>> y = shifted_depthwise_conv(keras.ops.ones((1, 5, 5, 2)), keras.ops.ones((3, 3, 2, 1)))
    >>> keras.ops.convert_to_numpy(y[0, 2, 2])
    array([9., 9.], dtype=float32)
    """
    size = kernel.shape[0]

    @ops.custom_gradient
    def convolve(x, kernel):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # Both gradients from the windows of the padded output gradient g:
            # dx = sum over taps of window(2p - i, 2p - j) * kernel[i, j] (the kernel
            # turned by 180 degrees), dkernel[i, j] = sum of x * window(2p - i, 2p - j).
            # The forward's windows of x are then never kept for the backward pass.
            input_gradient = _shifted_multiply_add(upstream, ops.flip(kernel, axis=(0, 1)))
            padded = ops.pad(upstream, _pad_for(size))
            return input_gradient, _depthwise_kernel_gradient(x, padded, kernel)

        return _shifted_multiply_add(x, kernel), gradient

    return convolve(x, kernel)


@functools.cache
def _tensorflow_optimization_barrier():
    """TensorFlow's XLA optimisation barrier (`tf2xla`'s, not public API), or None without it."""
    try:
        from tensorflow.compiler.tf2xla.python import xla
    except ImportError:  # pragma: no cover - a TensorFlow without it
        return None
    return getattr(xla, "optimization_barrier", None)


def _pinned(x):
    """`x`, computed where it stands: behind XLA's optimization barrier; elsewhere `x` itself.

    XLA then neither fuses the expression into its consumers (each would compute
    it again) nor merges it with an equal expression elsewhere in the program.
    JAX has the barrier as `jax.lax.optimization_barrier`; TensorFlow only inside
    functions that XLA compiles, through its `tf2xla` module.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        from jax import lax

        return lax.optimization_barrier(x)
    if backend == "tensorflow" and _tensorflow_in_xla():
        barrier = _tensorflow_optimization_barrier()
        if barrier is not None:
            return barrier(x)[0]
    return x


def pins_for_xla_cpu():
    """True while tracing for XLA on a CPU with a backend whose `_pinned` pins.

    JAX always has the barrier; TensorFlow has it where its `tf2xla` module does.
    """
    if not compiling_for_xla_cpu():
        return False
    return keras.backend.backend() == "jax" or _tensorflow_optimization_barrier() is not None


def _silu_derivative(x):
    sigmoid = ops.sigmoid(x)
    return sigmoid * (1 + x * (1 - sigmoid))


def pinned_silu_depthwise_silu(x, kernel):
    """`silu(depthwise_conv(silu(x), kernel))` with the intermediate maps pinned and the gradient written out.

    The middle of the conv FFN, for a stride-1 "same" depthwise convolution with
    an odd kernel side k. Left to autodiff under JAX, XLA:CPU wrote the first
    SiLU out as three maps (its sigmoid, the SiLU, the SiLU padded) and the
    second's sigmoid as one more, and fused the second SiLU's gradient into both
    of the convolution's gradients, which then computed it once per tap. Here
    the forward pass writes three maps, the padded first activation, the
    convolution and the output, and the backward pass three, each in one fused
    loop: the padded gradient of the convolution, the input gradient (the taps
    of that map with the kernel turned by 180 degrees, times the derivative of
    the first SiLU), and the kernel gradient's partial sums. The maps are pinned
    (on JAX, `jax.lax.optimization_barrier`) so that XLA keeps that plan; the
    sigmoids are computed again where they are needed, not written out.

    One conv FFN of HAT-Net-Small, forward and backward at batch 16 on JAX on
    the 2-core Intel Xeon, 10-12 interleaved pairs, the default formulation
    against this one: stage 1 (56x56x512 hidden) 502 -> 393 ms, stage 2 355 ->
    309 ms, stage 3 197 -> 179 ms, stage 4 103 -> 97 ms; this one faster in every
    pair but one. Other backends compute the same function and gradient (nothing
    is pinned there), but only XLA on a CPU uses it (`silu_depthwise_silu`).

    TensorFlow + XLA, pinned with `tf2xla`'s barrier, on a 2-core AMD EPYC (Zen
    5), the conv FFN forward and backward at batch 16, 9 interleaved rounds: stage
    1 170 -> 133 ms (the TensorFlow graph: 131), stage 2 116 -> 97, stage 3 60 ->
    56; a training step of HAT-Net-Small, two models in one process, 8 pairs
    twice: 2.35 -> 2.16 s and 2.48 -> 2.28 s, faster in every pair, the same
    weights after the same steps.

    Args:
        x: `(batch, height, width, channels)`.
        kernel: `(k, k, channels, 1)`.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import pinned_silu_depthwise_silu
    >>> y = pinned_silu_depthwise_silu(keras.ops.zeros((1, 4, 4, 2)), keras.ops.ones((3, 3, 2, 1)))
    >>> keras.ops.convert_to_numpy(y[0, 0, 0])
    array([0., 0.], dtype=float32)
    """
    size = kernel.shape[0]
    pad = size // 2
    inner = slice(pad, -pad or None)

    @ops.custom_gradient
    def middle(x, kernel):
        activated = _pinned(ops.pad(x * ops.sigmoid(x), _pad_for(size)))
        conv = _pinned(_taps(activated, kernel))

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # The pins on `conv` and `x` keep XLA from sharing the forward pass's sigmoids,
            # which it would then write out as maps of their own.
            conv_gradient = _pinned(
                ops.pad(upstream * _silu_derivative(_pinned(conv)), _pad_for(size))
            )
            turned = ops.flip(kernel, axis=(0, 1))
            input_gradient = _taps(conv_gradient, turned) * _silu_derivative(_pinned(x))
            unpadded = activated[:, inner, inner, :]
            return input_gradient, _depthwise_kernel_gradient(unpadded, conv_gradient, kernel)

        return conv * ops.sigmoid(conv), gradient

    return middle(x, kernel)


def _pinned_transpose(x):
    """`x` with its last two axes swapped, written out where it stands (see `_pinned`)."""
    return _pinned(ops.swapaxes(x, -1, -2))


def attention_weights(query, key, scale, mask=None):
    """Float32 softmax of `query . key^T * scale` over the keys, -1e9 where `mask` is false.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import attention_weights
    >>> q = keras.ops.ones((1, 2, 3, 4))  # 1 map, 2 heads, 3 tokens, head_dim 4
    >>> tuple(attention_weights(q, q, scale=0.5).shape)
    (1, 2, 3, 3)
    """
    logits = ops.cast(ops.einsum("bnth,bnsh->bnts", query, key), "float32") * scale
    if mask is not None:
        logits = ops.where(mask, logits, -1e9)
    return ops.softmax(logits, axis=-1)


def pinned_attention(query, key, value, scale, mask=None):
    """Softmax attention on heads-first tensors, its gradient written out with two pinned transposes.

    Computes what `attend` does as two batched matrix products: float32 logits
    `query . key^T * scale` (where `mask`, broadcast to `(batch, heads, query
    tokens, key tokens)`, is true; elsewhere -1e9), their float32 softmax cast to
    the value's dtype, times `value`. Two of autodiff's four gradient products,
    those of the key and the value, contract the query tokens of both operands;
    XLA:CPU ran them as its own batched `dot` at 15 GFLOP/s in a JAX training step
    of HAT-Net-Small, a quarter of its other products' speed, and folded any
    transpose written in front of them back into the product. Here the softmax
    weights and the logits' gradient are transposed and pinned (on JAX,
    `jax.lax.optimization_barrier`), so that both products take a plain
    `(keys, queries) . (queries, head_dim)` form that XLA hands to its matrix
    library.

    HAT-Net-Small at batch 16 on JAX on the 2-core Intel Xeon, autodiff's
    products against this function, in one process: a Keras training step
    (AdamW) 6.49 -> 6.33 s (median of 10 interleaved pairs, this one faster in
    8); gradient steps in four runs of 8-12 pairs, a pair's median ratio 0.97,
    0.97, 1.01 and 0.98. Other backends compute the same function and
    gradient (nothing is pinned there), but only XLA on a CPU uses it (`attend`).
    TensorFlow + XLA on a 2-core AMD EPYC (Zen 5), with its conv FFN already
    pinned: a training step of HAT-Net-Small, two models in one process, 8 pairs
    twice, 2.34 -> 2.18 s and 2.15 -> 2.03 s, faster in every pair.

    Args:
        query: `(batch, heads, query tokens, head_dim)`.
        key, value: `(batch, heads, key tokens, head_dim)`.
        scale: the logits' factor, a Python float.
        mask: None, or booleans broadcastable to `(batch, heads, query tokens,
            key tokens)`, true where a key may be attended to (not differentiated).

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import pinned_attention
    >>> q = keras.ops.ones((2, 4, 9, 8))  # 2 maps, 4 heads, 9 tokens, head_dim 8
    >>> tuple(pinned_attention(q, q, q, scale=8**-0.5).shape)
    (2, 4, 9, 8)
    """
    @ops.custom_gradient
    def attention(query, key, value, *mask):
        # The mask comes in as an argument: closed over, under JAX it would be a
        # constant of the gradient's program, which export cannot take with a
        # symbolic batch size (it holds one row per window of every map).
        mask = mask[0] if mask else None
        weights = attention_weights(query, key, scale, mask)
        weights_in_value_dtype = ops.cast(weights, value.dtype)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            weights_gradient = ops.cast(
                ops.einsum("bnth,bnsh->bnts", upstream, value), "float32"
            )
            logits_gradient = weights * (
                weights_gradient - ops.sum(weights_gradient * weights, axis=-1, keepdims=True)
            )
            if mask is not None:
                logits_gradient = ops.where(mask, logits_gradient, 0.0)
            logits_gradient = ops.cast(logits_gradient * scale, query.dtype)
            query_gradient = ops.einsum("bnts,bnsh->bnth", logits_gradient, key)
            key_gradient = ops.einsum(
                "bnst,bnth->bnsh", _pinned_transpose(logits_gradient), query
            )
            value_gradient = ops.einsum(
                "bnst,bnth->bnsh", _pinned_transpose(weights_in_value_dtype), upstream
            )
            gradients = (query_gradient, key_gradient, value_gradient)
            return gradients if mask is None else (*gradients, None)

        return ops.einsum("bnts,bnsh->bnth", weights_in_value_dtype, value), gradient

    if mask is None:
        return attention(query, key, value)
    return attention(query, key, value, ops.convert_to_tensor(mask, dtype="bool"))


@functools.cache
def _tensorflow_silu_gradient():
    """SiLU's input gradient as one function that XLA compiles into a single loop."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def silu_gradient(x, y, upstream):
        dtype = x.dtype
        if is_half_precision(dtype):
            # XLA:CPU runs half-precision elementwise ops one by one, each rounded: the
            # stage-1 map's SiLU forward and backward in bfloat16 took 23 ms against 13
            # in float32 (2-core AMD EPYC, Zen 5). In float32, rounded once: 13.5 ms.
            x, y, upstream = (tf.cast(t, tf.float32) for t in (x, y, upstream))
        # d(x * sigmoid(x))/dx = sigmoid(x) + y * (1 - sigmoid(x)), with y = x * sigmoid(x).
        sigmoid = tf.sigmoid(x)
        return tf.cast(upstream * (y + sigmoid * (1 - y)), dtype)

    return silu_gradient


def _tensorflow_silu(x):
    import tensorflow as tf

    silu_gradient = _tensorflow_silu_gradient()

    @tf.custom_gradient
    def silu_with_compiled_gradient(x):
        y = x * tf.sigmoid(x)  # one oneDNN Swish op in TensorFlow's graph on a CPU

        def gradient(upstream):
            return silu_gradient(x, y, upstream)

        return y, gradient

    return silu_with_compiled_gradient(x)


def silu(x):
    """SiLU, `x * sigmoid(x)`, formulated per backend.

    TensorFlow outside XLA (a plain graph, as `hatnet-train` runs on a CPU) takes
    a gradient compiled by XLA: autodiff of `keras.ops.silu` there runs TensorFlow's
    sigmoid again (slow: 47 ms on a 16x56x56x512 map of the 2-core Intel Xeon,
    where the forward pass's fused Swish op takes 16 ms) and four more elementwise
    ops, each a pass over the map. The stage-1 conv FFN's two products, SiLUs and
    depthwise convolution, forward and backward at batch 16, 10 interleaved pairs:
    426 -> 330 ms; a training step of HAT-Net-Small at batch 16: 4.33 -> 3.95 s.
    For half-precision input that gradient computes in float32 and rounds once, as
    XLA:CPU runs half-precision ops one by one (a mixed_bfloat16 training step:
    1.35 -> 1.23 s). Under XLA the whole program is fused anyway, and the other backends use
    `keras.ops.silu` (on eager torch, PyTorch's, see `eager`).

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import silu
    >>> keras.ops.convert_to_numpy(silu(keras.ops.convert_to_tensor([0.0, 1.0]))).round(4)
    array([0.    , 0.7311], dtype=float32)
    """
    if keras.backend.backend() == "tensorflow" and not _tensorflow_in_xla():
        return _tensorflow_silu(x)
    return eager.silu(x)


def silu_depthwise_silu(x, kernel):
    """`silu(depthwise_conv(silu(x), kernel))`, stride 1, "same", formulated per backend.

    XLA on a CPU takes `pinned_silu_depthwise_silu`; elsewhere the SiLUs are
    `silu` and the convolution is `depthwise_conv`.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import silu_depthwise_silu
    >>> y = silu_depthwise_silu(keras.ops.ones((1, 5, 5, 2)), keras.ops.ones((3, 3, 2, 1)))
    >>> tuple(y.shape)
    (1, 5, 5, 2)
    """
    if compiling_for_xla_cpu() and is_half_precision(x.dtype):
        # XLA:CPU runs these shifted multiply-adds and their window sums in half
        # precision op by op, rounding each result: the stage-1 SiLU, depthwise
        # convolution and SiLU of HAT-Net-Small at batch 16 under JAX on a 2-core
        # AMD EPYC (Zen 5), forward and backward, took 550 ms in bfloat16 against 43
        # ms in float32. Computed in float32 and rounded once at the end: 50 ms.
        out = silu_depthwise_silu(ops.cast(x, "float32"), ops.cast(kernel, "float32"))
        return ops.cast(out, x.dtype)
    if pins_for_xla_cpu():
        return pinned_silu_depthwise_silu(x, kernel)
    return silu(depthwise_conv(silu(x), kernel))


def window_average(x, size):
    """Average pooling of a channels-last map with kernel and stride `size`, "valid".

    Under XLA on a CPU, a map whose sides are known multiples of `size` is
    averaged as a mean over the axes of its reshaped windows: the gradient is
    then a broadcast, where autodiff of the pooling pads the output gradient and
    runs a generic windowed sum (about 95 of the 5,100 ms of operations in a JAX
    training step of HAT-Net-Small at batch 8).

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import window_average
    >>> y = window_average(keras.ops.ones((1, 4, 4, 2)), 2)
    >>> tuple(y.shape)
    (1, 2, 2, 2)
    """
    height, width, channels = x.shape[1:]
    known = None not in (height, width, channels)
    if compiling_for_xla_cpu() and known and height % size == 0 and width % size == 0:
        windows = ops.reshape(x, (-1, height // size, size, width // size, size, channels))
        return ops.mean(windows, axis=(2, 4))
    if eager.is_torch_tensor(x):  # PyTorch's pooling of the channels-first view, as Keras calls it
        import torch

        out = torch.nn.functional.avg_pool2d(_channels_first_view(x), size, stride=size)
        return _channels_last_view(out)
    return ops.average_pool(x, size, strides=size, padding="valid")


def channel_matmul(x, kernel, bias=None):
    """`x @ kernel (+ bias)` over the last axis of a map, with the gradient written out.

    Autodiff contracts the output gradient (often the wider operand) with the
    input for the weight gradient, and XLA:CPU then transposes the output
    gradient with everything that produced it fused into the transpose, a slow
    strided loop (a JAX training step of HAT-Net-Small at batch 8: 7.6 s; 3.9 s
    this way). Here the input comes first, and both maps are flattened to
    (positions, channels) matrices before the contraction: XLA:CPU then runs one
    matrix product that reads the input transposed as it lies. Contracted over the
    three leading axes of the 4-D maps instead, it first copied the input into a
    transposed layout with its producers fused into the copy, another slow strided
    loop (the weight gradient of an 8x56x56x512 SiLU output projected to 64
    channels: 164 ms that way, 57 ms this way). The bias gradient is a
    `sum_over_positions`. Under TensorFlow's XLA a product to fewer channels has its
    kernel gradient in two halves of the positions (`_kernel_gradient`).

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import channel_matmul
    >>> y = channel_matmul(keras.ops.ones((1, 2, 2, 3)), keras.ops.ones((3, 4)))
    >>> tuple(y.shape), keras.ops.convert_to_numpy(y[0, 0, 0]).tolist()
    ((1, 2, 2, 4), [3.0, 3.0, 3.0, 3.0])
    """

    @ops.custom_gradient
    def matmul(x, kernel, *bias):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            input_gradient = ops.matmul(upstream, ops.transpose(kernel))
            kernel_gradient = _kernel_gradient(x, upstream)
            if not bias:
                return input_gradient, kernel_gradient
            return input_gradient, kernel_gradient, sum_over_positions(upstream)

        out = ops.matmul(x, kernel)
        return (out + bias[0] if bias else out), gradient

    return matmul(x, kernel, *([] if bias is None else [bias]))


def normalise_with_statistics(x, gamma, beta, epsilon):
    """GroupNorm with one group of a `(batch, height, width, C)` map, and its statistics.

    Returns the output, each sample's mean and each sample's inverse standard
    deviation (both `(batch, 1, 1, 1)`). The normalisation and the affine map are
    folded into one scale and shift per sample and channel: two passes over the
    map instead of four where TensorFlow runs them op by op (XLA fuses either form).

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import normalise_with_statistics
    >>> out, mean, inverse_std = normalise_with_statistics(
    ...     keras.ops.ones((2, 3, 3, 4)), keras.ops.ones((4,)), keras.ops.zeros((4,)), 1e-6)
    >>> tuple(mean.shape)
    (2, 1, 1, 1)
    """
    mean, variance = ops.moments(x, axes=(1, 2, 3), keepdims=True)
    inverse_std = ops.rsqrt(variance + epsilon)
    scale = inverse_std * gamma
    return x * scale + (beta - mean * scale), mean, inverse_std


def group_norm_one_group(x, gamma, beta, epsilon):
    """GroupNorm with one group of a float32 `(batch, height, width, C)` map, gradient written out.

    Each sample is normalised over its whole map, then scaled by `gamma` and shifted
    by `beta` per channel, as `normalise_with_statistics`. With autodiff's gradient,
    XLA:CPU under JAX never writes out the gradient of a stage's residual stream:
    each of its consumers re-evaluates the gradient additions of every later block
    of the stage, in fusions of up to 900 ops that grow with the depth (the 8
    stage-3 blocks of HAT-Net-Small, forward and backward at batch 16: 2.5-2.65 s
    that way, 2.1-2.2 s this way). Here the gradient starts with two sums over each
    sample's positions, per channel: of the output gradient, and of its product
    with the normalised map. XLA does not fuse an operand into such a reduction, so
    the output gradient is written out once; autodiff's four reductions (two for
    the input gradient, one each for gamma and beta) come from these two.

    GroupNorm uses it on JAX on a CPU only. TensorFlow's XLA did not fuse such a
    chain (measured on six residual blocks), and there these sums, slow over the
    positions' axis (see `sum_over_positions`), made a training step of HAT-Net-Small
    at batch 16 slower: 5.6 -> 5.9 s; as products with ones, 5.1 s either way.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import group_norm_one_group
    >>> x = keras.ops.ones((2, 3, 3, 4))
    >>> one, zero = keras.ops.ones((4,)), keras.ops.zeros((4,))
    >>> tuple(group_norm_one_group(x, one, zero, 1e-6).shape)
    (2, 3, 3, 4)
    """

    @ops.custom_gradient
    def normalise(x, gamma, beta):
        out, mean, inverse_std = normalise_with_statistics(x, gamma, beta, epsilon)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            normalised = (x - mean) * inverse_std
            batch, height, width, channels = ops.shape(x)
            # (batch, positions, channels): each sample's sums over its positions.
            per_sample = (batch, -1, channels)
            sum_upstream = ops.sum(ops.reshape(upstream, per_sample), axis=1)
            sum_product = ops.sum(ops.reshape(upstream * normalised, per_sample), axis=1)
            count = ops.cast(height * width * channels, x.dtype)

            def per_sample_mean(channel_sums):
                mean_over_map = ops.sum(channel_sums * gamma, axis=1) / count
                return ops.reshape(mean_over_map, (-1, 1, 1, 1))

            input_gradient = inverse_std * (
                upstream * gamma
                - per_sample_mean(sum_upstream)
                - normalised * per_sample_mean(sum_product)
            )
            return input_gradient, ops.sum(sum_product, axis=0), ops.sum(sum_upstream, axis=0)

        return out, gradient

    return normalise(x, gamma, beta)


def _kernel_gradient(x, upstream):
    """`x` and `upstream` contracted over every position: `channel_matmul`'s kernel gradient.

    TensorFlow's XLA:CPU runs it as one product over all positions, slowly where
    `upstream` has fewer channels than `x` (a projection back to a block's width): the
    stage-1 conv FFN's projection, 50176 positions of 512 and 64 channels, on a 2-core
    AMD EPYC (Zen 5), 37 ms under XLA against 11.5 ms in TensorFlow's graph. As a
    batched product over two halves of the positions, `upstream`'s channels the rows
    of each, and the two summed, XLA runs it in about 18 ms there (alone). Two halves
    as separate products were slower than one, and so was the other orientation.
    A training step of HAT-Net-Small at batch 16 under TensorFlow + XLA, two models in
    one process, interleaved pairs: 2.42 -> 2.36 s (median; faster in 10 of 10), and
    while it was tried out, 2.51 -> 2.46 s (12 of 12). The halves need an even number of
    positions per sample (stage 4's 7 x 7 maps keep the single product).
    """
    if (
        keras.backend.backend() == "tensorflow"
        and compiling_for_xla_cpu()
        and upstream.shape[-1] < x.shape[-1]
        and len(x.shape) == 4
        and None not in x.shape[1:3]
        and x.shape[1] * x.shape[2] % 2 == 0
    ):
        def halves(m):
            return ops.reshape(m, (2, -1, m.shape[-1]))

        summed = ops.sum(ops.matmul(ops.transpose(halves(upstream), (0, 2, 1)), halves(x)), axis=0)
        return ops.transpose(summed)
    return ops.tensordot(_positions_by_channels(x), _positions_by_channels(upstream), axes=(0, 0))


def _positions_by_channels(x):
    """`x` as a matrix: one row per position, one column per channel (the last axis)."""
    return ops.reshape(x, (-1, x.shape[-1]))


def _pair(strides):
    return (strides, strides) if isinstance(strides, int) else tuple(strides)


def _channels_first_view(x):
    return eager.transpose(x, (0, 3, 1, 2))


def _channels_last_view(x):
    return eager.transpose(x, (0, 2, 3, 1))


def depthwise_conv(x, kernel):
    """Stride-1 "same" depthwise convolution of a channels-last map, formulated per backend."""
    if compiling_for_xla_cpu():
        return shifted_depthwise_conv(x, kernel)
    if eager.is_torch_tensor(x) and kernel.shape[0] % 2 and kernel.shape[3] == 1:
        # PyTorch's grouped convolution as Keras' torch backend calls it; an odd
        # kernel's "same" padding is k // 2 on every side, done by the convolution.
        import torch

        size, channels = kernel.shape[0], kernel.shape[2]
        out = torch.nn.functional.conv2d(
            _channels_first_view(x), eager.transpose(kernel, (2, 3, 0, 1)),
            padding=size // 2, groups=channels,
        )
        return _channels_last_view(out)
    if keras.backend.backend() == "torch":
        out = ops.depthwise_conv(
            _channels_first_view(x), kernel, strides=1, padding="same",
            data_format="channels_first",
        )
        return _channels_last_view(out)
    return ops.depthwise_conv(x, kernel, strides=1, padding="same")


def patches(x, size, strides):
    """The `size` x `size` windows of a "valid" convolution with `strides`, laid along the channels.

    Returns `(batch, rows, cols, size * size * C)`: at each output position, the
    window's pixels in row-major order, each with its C channels, the order of a
    `(size, size, C, out)` kernel reshaped to `(size * size * C, out)`.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import patches
    >>> tuple(patches(keras.ops.ones((1, 5, 5, 2)), 3, (2, 2)).shape)
    (1, 2, 2, 18)
    """
    stride_rows, stride_cols = strides
    rows = (x.shape[1] - size) // stride_rows + 1
    cols = (x.shape[2] - size) // stride_cols + 1
    windows = [
        x[
            :,
            i : i + stride_rows * (rows - 1) + 1 : stride_rows,
            j : j + stride_cols * (cols - 1) + 1 : stride_cols,
            :,
        ]
        for i in range(size)
        for j in range(size)
    ]
    return ops.concatenate(windows, axis=-1)


def _runs_as_patch_product(x, kernel):
    """True on JAX on a CPU for a square k x k kernel (k > 1) over a map of known size."""
    size, other_side = kernel.shape[:2]
    return jax_on_cpu() and size == other_side > 1 and None not in x.shape[1:]


def conv(x, kernel, bias, strides, padding=0):
    """A convolution of a channels-last map plus `bias` (or None), formulated per backend.

    The map is zero-padded by `padding` pixels on every side (as PyTorch's
    `padding`), then convolved "valid" with `strides`. On torch the convolution
    pads, with no padded copy of the map.

    JAX on a CPU runs a k x k convolution (k > 1) as one matrix product of its
    `patches` with the kernel (`channel_matmul`). XLA:CPU's own convolution and
    its gradients were slower there: the stride-2 3x3 convolutions of
    HAT-Net-Small's stem and downsampling layers, forward and backward at batch
    16, 15 interleaved pairs each: 100 -> 39 ms (16 to 64 channels at 112x112),
    90 -> 51, 56 -> 33 and 41 -> 26 ms (the three downsampling layers), faster
    in every pair.
    """
    if eager.is_torch_tensor(x):  # first: the torch backend calls this every step
        # PyTorch's convolution as Keras' torch backend calls it, with the bias
        # added by the same kernel, and without Keras' per-op host time.
        import torch

        out = torch.nn.functional.conv2d(
            _channels_first_view(x), eager.transpose(kernel, (3, 2, 0, 1)), bias,
            stride=_pair(strides), padding=padding,
        )
        return _channels_last_view(out)
    if padding:
        x = ops.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    if _runs_as_patch_product(x, kernel):
        kernel_matrix = ops.reshape(kernel, (-1, kernel.shape[-1]))
        return channel_matmul(patches(x, kernel.shape[0], _pair(strides)), kernel_matrix, bias)
    else:
        out = ops.conv(x, kernel, strides=strides, padding="valid")
    return out if bias is None else out + bias


@keras.saving.register_keras_serializable(package="hatnet_keras")
class PointwiseDense(keras.layers.Dense):
    """`keras.layers.Dense` over the channels of a `(batch, height, width, C)` map.

    The same layer, weights and config as `Dense`. On the torch backend, in
    float32, it runs as a 1x1 convolution of the channels-first view of the map,
    which PyTorch's oneDNN kernel computes 1.4-2x faster than the matrix product
    on a large map (a 16x56x56x64 map to 512 channels: 41 -> 28 ms on 2 cores);
    in half precision as PyTorch's `linear`, the bias added by the product's kernel.
    Under XLA on a CPU it is a `channel_matmul`, whose gradient is written out.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers.kernels import PointwiseDense
    >>> layer = PointwiseDense(8)
    >>> tuple(layer(keras.ops.ones((2, 5, 5, 3))).shape)
    (2, 5, 5, 8)
    """

    def call(self, inputs, training=None):
        if (
            len(inputs.shape) != 4
            or self.quantization_mode is not None
            or getattr(self, "lora_enabled", False)
        ):
            return super().call(inputs, training=training)
        if compiling_for_xla_cpu():
            out = channel_matmul(inputs, *self._kernel_and_bias())
        elif eager.is_torch_tensor(inputs):
            kernel, bias = self._kernel_and_bias()
            if self.compute_dtype == "float32":
                out = conv(inputs, eager.reshape(kernel, (1, 1, *kernel.shape)), bias, strides=1)
            else:
                # Half precision (a GPU's): one product with the bias added in the same
                # kernel, for the two `keras.ops` calls of `Dense.call`.
                import torch

                out = torch.nn.functional.linear(inputs, eager.transpose(kernel, (1, 0)), bias)
        else:
            return super().call(inputs, training=training)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def _kernel_and_bias(self):
        kernel = eager.cast(self.kernel, self.compute_dtype)
        bias = eager.cast(self.bias, self.compute_dtype) if self.use_bias else None
        return kernel, bias
