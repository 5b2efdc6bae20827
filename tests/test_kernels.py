"""Backend-specific formulations in hatnet_keras.layers.kernels equal the plain keras.ops."""

import numpy as np
import pytest

import keras
from keras import ops

from hatnet_keras.layers import eager
from hatnet_keras.layers.kernels import (
    PointwiseDense,
    _row_group_sums_in_one_pass,
    channel_matmul,
    compiling_for_xla_cpu,
    conv,
    depthwise_conv,
    group_norm_one_group,
    normalise_with_statistics,
    patches,
    pinned_attention,
    pinned_silu_depthwise_silu,
    shifted_depthwise_conv,
    silu,
    silu_depthwise_silu,
    window_average,
)

BACKEND = keras.backend.backend()


def _random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _compiled(fn):
    """`fn` as the backend's compiler runs it (XLA on TensorFlow and JAX)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


@pytest.mark.parametrize("size, kernel_size", [((9, 7), 3), ((8, 8), 5), ((3, 4), 3)])
def test_shifted_depthwise_conv_equals_the_convolution(size, kernel_size):
    x = _random(2, *size, 6)
    kernel = _random(kernel_size, kernel_size, 6, 1, seed=1)
    expected = ops.depthwise_conv(x, kernel, strides=1, padding="same")
    np.testing.assert_allclose(
        ops.convert_to_numpy(shifted_depthwise_conv(x, kernel)),
        ops.convert_to_numpy(expected),
        atol=1e-5,
    )


@pytest.mark.parametrize("compile_it", [False, True])
def test_depthwise_conv_equals_the_convolution_eagerly_and_compiled(compile_it):
    x = _random(2, 10, 11, 8)
    kernel = _random(3, 3, 8, 1, seed=1)
    fn = _compiled(depthwise_conv) if compile_it else depthwise_conv
    out = ops.convert_to_numpy(fn(x, kernel))
    assert out.shape == (2, 10, 11, 8)
    expected = ops.convert_to_numpy(ops.depthwise_conv(x, kernel, strides=1, padding="same"))
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("padding, out_side", [(0, 4), (1, 5)])
def test_strided_conv_with_bias_equals_the_convolution(padding, out_side):
    x, kernel, bias = (
        ops.convert_to_tensor(a) for a in (_random(2, 9, 10, 3), _random(3, 3, 3, 5, seed=1),
                                            _random(5, seed=2))
    )
    out = ops.convert_to_numpy(conv(x, kernel, bias, strides=2, padding=padding))
    padded = ops.pad(x, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    expected = ops.convert_to_numpy(ops.conv(padded, kernel, strides=2, padding="valid") + bias)
    assert out.shape == (2, out_side, out_side, 5)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def _padded_conv(x, kernel, bias):
    padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return ops.conv(padded, kernel, strides=2, padding="valid") + bias


KERNELS_AND_KERAS_OPS = {
    "depthwise_conv": (
        lambda x, kernel: depthwise_conv(x, kernel),
        lambda x, kernel: ops.depthwise_conv(x, kernel, strides=1, padding="same"),
        ((2, 9, 10, 4), (5, 5, 4, 1)),
    ),
    "conv": (
        lambda x, kernel, bias: conv(x, kernel, bias, strides=2, padding=1),
        _padded_conv,
        ((2, 9, 10, 3), (3, 3, 3, 5), (5,)),
    ),
    "pointwise_conv": (
        lambda x, kernel, bias: conv(x, kernel, bias, strides=1),
        lambda x, kernel, bias: ops.conv(x, kernel, strides=1, padding="valid") + bias,
        ((2, 5, 6, 3), (1, 1, 3, 7), (7,)),
    ),
    "window_average": (
        lambda x: window_average(x, 2),
        lambda x: ops.average_pool(x, 2, strides=2, padding="valid"),
        ((2, 8, 6, 3),),
    ),
    "silu": (eager.silu, keras.activations.silu, ((2, 3, 4),)),
}


@pytest.mark.parametrize("name", sorted(KERNELS_AND_KERAS_OPS))
def test_kernels_and_their_gradients_equal_keras_ops(name):
    # With tensors, as in a model: on torch these call PyTorch directly (layers.eager).
    ours, keras_op, shapes = KERNELS_AND_KERAS_OPS[name]
    arrays = [_random(*shape, seed=index) for index, shape in enumerate(shapes)]
    tensors = [ops.convert_to_tensor(a) for a in arrays]
    expected = ops.convert_to_numpy(keras_op(*tensors))
    np.testing.assert_allclose(ops.convert_to_numpy(ours(*tensors)), expected, atol=1e-5)
    weights = _random(*expected.shape, seed=9)
    got = _gradients(ours, arrays, weights, compile_it=False)
    want = _gradients(keras_op, arrays, weights, compile_it=False)
    for ours_gradient, keras_gradient in zip(got, want):
        np.testing.assert_allclose(ours_gradient, keras_gradient, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("compile_it", [False, True])
@pytest.mark.parametrize("shape, strides", [((2, 9, 10, 3), (2, 2)), ((1, 8, 7, 4), (1, 2))])
def test_patches_times_kernel_and_its_gradients_equal_the_convolution(shape, strides, compile_it):
    # JAX on a CPU runs `conv` this way (a product of the patches with the kernel).
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    x = _random(*shape)
    kernel, bias = _random(3, 3, shape[-1], 5, seed=1), _random(5, seed=2)

    def as_product(x, kernel, bias):
        return channel_matmul(patches(x, 3, strides), ops.reshape(kernel, (-1, 5)), bias)

    def convolution(x, kernel, bias):
        return ops.conv(x, kernel, strides=strides, padding="valid") + bias

    weights = _random(*convolution(x, kernel, bias).shape, seed=3)
    expected = _gradients(convolution, (x, kernel, bias), weights, compile_it=False)
    actual = _gradients(as_product, (x, kernel, bias), weights, compile_it)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX on a CPU runs conv as a matrix product")
def test_conv_on_jax_runs_as_one_matrix_product_of_the_patches():
    import jax

    x = _random(2, 9, 10, 3)
    kernel, bias = _random(3, 3, 3, 5, seed=1), _random(5, seed=2)
    program = jax.jit(lambda x: conv(x, kernel, bias, strides=2)).lower(x).as_text()
    assert "convolution" not in program
    assert program.count("dot_general") == 1


def test_xla_cpu_is_detected_where_xla_compiles():
    seen = []

    def probe(x):
        seen.append(compiling_for_xla_cpu())
        return x + 1

    _compiled(probe)(ops.ones((2,)))
    probe(ops.ones((2,)))
    # JAX compiles with XLA even eagerly; TensorFlow only inside jit_compile=True;
    # the torch backend never does (on this CPU-only test machine).
    expected = {"jax": [True, True], "tensorflow": [True, False], "torch": [False, False]}
    assert seen == expected[BACKEND]



def _gradients(fn, arrays, weights, compile_it):
    """d(sum(fn(*arrays) * weights)) / d(arrays) with the backend's autodiff, as numpy."""
    if BACKEND == "jax":
        import jax

        def loss(*arrays):
            return ops.sum(fn(*arrays) * weights)

        grad = jax.grad(loss, argnums=tuple(range(len(arrays))))
        return [np.asarray(g) for g in (jax.jit(grad) if compile_it else grad)(*arrays)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grad(*arrays):
            with tf.GradientTape() as tape:
                tape.watch(arrays)
                loss = ops.sum(fn(*arrays) * weights)
            return tape.gradient(loss, arrays)

        grad = tf.function(grad, jit_compile=True) if compile_it else grad
        return [g.numpy() for g in grad(*[tf.constant(a) for a in arrays])]
    import torch

    arrays = [torch.tensor(a, requires_grad=True) for a in arrays]
    ops.sum(fn(*arrays) * ops.convert_to_tensor(weights)).backward()
    return [a.grad.numpy() for a in arrays]


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("compile_it", [False, True])
# The kernel gradient adds rows in groups of the height's largest divisor up to 8:
# groups of 3, of 8, and single rows (a prime height above 8).
@pytest.mark.parametrize("shape", [(2, 9, 7, 6), (1, 16, 5, 4), (2, 11, 6, 3)])
def test_shifted_depthwise_conv_gradients_equal_the_convolutions(kernel_size, compile_it, shape):
    # Its gradient is written out (see shifted_depthwise_conv), not left to autodiff.
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    x = _random(*shape)
    kernel = _random(kernel_size, kernel_size, shape[-1], 1, seed=1)
    weights = _random(*shape, seed=2)

    def plain(x, kernel):
        return ops.depthwise_conv(x, kernel, strides=1, padding="same")

    expected = _gradients(plain, (x, kernel), weights, compile_it=False)
    actual = _gradients(shifted_depthwise_conv, (x, kernel), weights, compile_it)
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, atol=2e-5)


def _plain_silu_depthwise_silu(x, kernel):
    silu = keras.activations.silu
    return silu(ops.depthwise_conv(silu(x), kernel, strides=1, padding="same"))


@pytest.mark.parametrize("compile_it", [False, True])
# Row groups of 3 and single rows (a prime height above 8), and kernel sides 1, 3 and 5.
@pytest.mark.parametrize("shape, kernel_size", [((2, 9, 7, 6), 3), ((1, 11, 6, 3), 5), ((2, 4, 5, 3), 1)])
def test_pinned_silu_depthwise_silu_and_its_gradients_equal_autodiff(shape, kernel_size, compile_it):
    # Its gradient is written out (see pinned_silu_depthwise_silu), not left to autodiff.
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    x = _random(*shape) * 2.0
    kernel = _random(kernel_size, kernel_size, shape[-1], 1, seed=1)
    weights = _random(*shape, seed=2)
    tensors = [ops.convert_to_tensor(a) for a in (x, kernel)]
    for formulation in (pinned_silu_depthwise_silu, silu_depthwise_silu):
        np.testing.assert_allclose(
            ops.convert_to_numpy(formulation(*tensors)),
            ops.convert_to_numpy(_plain_silu_depthwise_silu(*tensors)),
            atol=1e-5,
        )
    expected = _gradients(_plain_silu_depthwise_silu, (x, kernel), weights, compile_it=False)
    actual = _gradients(pinned_silu_depthwise_silu, (x, kernel), weights, compile_it)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=3e-5, rtol=1e-4)


def _half_and_float32_gradients(fn, x, kernel, dtype):
    """fn's output and input gradient, compiled, for half-precision inputs and for the
    same (rounded) values in float32; the float32 ones rounded to `dtype`, all as float32."""

    def value_and_input_gradient(x, kernel):
        if BACKEND == "jax":
            import jax

            out, pullback = jax.vjp(lambda x: fn(x, kernel), x)
            return out, pullback(ops.ones_like(out))[0]
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x, kernel)
        return out, tape.gradient(out, x)

    compiled = _compiled(value_and_input_gradient)
    half = [ops.cast(a, dtype) for a in (x, kernel)]
    got = compiled(*half)
    want = compiled(*[ops.cast(a, "float32") for a in half])
    for tensor in got:
        assert keras.backend.standardize_dtype(tensor.dtype) == dtype
    as_float32 = lambda t: ops.convert_to_numpy(ops.cast(t, "float32"))
    return [as_float32(t) for t in got], [as_float32(ops.cast(t, dtype)) for t in want]


@pytest.mark.skipif(BACKEND == "torch", reason="taken where XLA compiles for a CPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_silu_depthwise_silu_in_half_precision_under_xla_is_float32_rounded_once(dtype):
    # XLA:CPU ran the shifted multiply-adds in half precision op by op (10x slower, and
    # rounded at every tap); they are computed in float32 and rounded at the end.
    x = _random(2, 9, 7, 32) * 2.0
    kernel = _random(5, 5, 32, 1, seed=1)
    got, want = _half_and_float32_gradients(silu_depthwise_silu, x, kernel, dtype)
    unit = 2.0 ** (-7 if dtype == "bfloat16" else -10)  # one unit in the last place, at most, relative
    for name, g, w in zip(("output", "input gradient"), got, want):
        # XLA may order float32 sums differently in the two programs: a value can round the other way.
        assert np.mean(g == w) > 0.97, name
        np.testing.assert_allclose(g, w, rtol=unit, atol=unit * 1e-2, err_msg=name)


def _jax_gradient_program(layer, x):
    """The gradient of a layer's squared output as JAX hands it to XLA (XLA drops the
    barriers once it has fused)."""
    import jax

    layer.build(x.shape)
    weights = [v.value for v in layer.trainable_variables]

    def loss(weights, x):
        out, _ = layer.stateless_call(weights, [], x)
        return ops.sum(out * out)

    return jax.jit(jax.grad(loss)).lower(weights, x).as_text()


def _tensorflow_xla_gradient_program(layer, x):
    """The gradient of a layer's squared output as TensorFlow hands it to XLA
    (`jit_compile=True`), before XLA's optimisations."""
    import tensorflow as tf

    layer.build(x.shape)

    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = ops.sum(out * out)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    x = tf.constant(x)
    return tf.function(gradient, jit_compile=True).experimental_get_compiler_ir(x)(stage="hlo")


def _barriers_in_xla_gradient_program(layer, x):
    """How many optimisation barriers the layer's gradient program hands to XLA on this backend."""
    if BACKEND == "jax":
        return _jax_gradient_program(layer, x).count("optimization_barrier")
    return _tensorflow_xla_gradient_program(layer, x).count(" opt-barrier(")


@pytest.mark.skipif(BACKEND == "torch", reason="the pinned formulation is taken where XLA compiles for a CPU")
def test_conv_ffn_gradient_under_xla_takes_the_pinned_formulation():
    from hatnet_keras.layers import ConvFFN

    barriers = _barriers_in_xla_gradient_program(ConvFFN(expansion=2, kernel_size=3), _random(2, 7, 7, 4))
    # Forward: the padded activation and the convolution; backward: the two pins that
    # keep the sigmoids apart, and the padded gradient of the convolution.
    assert barriers == 5


def _plain_attention(query, key, value, scale, mask=None):
    logits = ops.einsum("bnth,bnsh->bnts", query, key) * scale
    if mask is not None:
        logits = ops.where(mask, logits, -1e9)
    return ops.einsum("bnts,bnsh->bnth", ops.softmax(logits, axis=-1), value)


@pytest.mark.parametrize("compile_it", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_pinned_attention_and_its_gradients_equal_autodiff(compile_it, masked):
    # Its gradient is written out (see pinned_attention), not left to autodiff.
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    query, key, value = _random(2, 3, 7, 4), _random(2, 3, 5, 4, seed=1), _random(2, 3, 5, 4, seed=2)
    weights = _random(2, 3, 7, 4, seed=3)
    mask = None
    if masked:  # the last two keys of the second map masked out, as the local step's padding
        mask = np.ones((2, 1, 1, 5), bool)
        mask[1, :, :, -2:] = False
    scale = 0.5

    def pinned(q, k, v):
        return pinned_attention(q, k, v, scale, mask=mask)

    def plain(q, k, v):
        return _plain_attention(q, k, v, scale, mask=mask)

    tensors = [ops.convert_to_tensor(a) for a in (query, key, value)]
    np.testing.assert_allclose(
        ops.convert_to_numpy(pinned(*tensors)), ops.convert_to_numpy(plain(*tensors)), atol=1e-5
    )
    expected = _gradients(plain, (query, key, value), weights, compile_it=False)
    actual = _gradients(pinned, (query, key, value), weights, compile_it)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    if masked:  # a masked key gets no gradient at all
        assert not actual[1][1, :, -2:].any() and not actual[2][1, :, -2:].any()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_pinned_attention_gradients_in_half_precision_match_float32(dtype):
    if BACKEND == "torch" and dtype == "float16":
        pytest.skip("PyTorch's CPU batched products take no float16 here")
    query, key, value = _random(2, 2, 6, 8), _random(2, 2, 5, 8, seed=1), _random(2, 2, 5, 8, seed=2)
    weights = _random(2, 2, 6, 8, seed=3)

    def half(q, k, v):
        cast = [ops.cast(t, dtype) for t in (q, k, v)]
        return ops.cast(pinned_attention(*cast, 0.5), "float32")

    expected = _gradients(lambda q, k, v: pinned_attention(q, k, v, 0.5), (query, key, value), weights, False)
    actual = _gradients(half, (query, key, value), weights, compile_it=False)
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, atol=0.1, rtol=0.05)


@pytest.mark.skipif(BACKEND == "torch", reason="the pinned formulation is taken where XLA compiles for a CPU")
def test_attention_gradient_under_xla_takes_the_pinned_formulation():
    from hatnet_keras.layers import HierarchicalAttention

    layer = HierarchicalAttention(head_dim=4, grid_size=2, pool_ratio=2)
    barriers = _barriers_in_xla_gradient_program(layer, _random(2, 4, 4, 8))
    # Two pinned transposes in each attention step's gradient: the local and the global.
    assert barriers == 4


@pytest.mark.parametrize("compile_it", [False, True])
def test_window_row_sums_run_as_one_reduction_where_xla_compiles(compile_it):
    # The depthwise kernel gradient's partial sums: on JAX and under TensorFlow's XLA
    # one variadic reduction gives, for each 3x3 window of the padded map, its
    # products with x summed over groups of 3 rows. Elsewhere (None) the caller
    # falls back to one keras.ops loop per window.
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    x, padded = _random(2, 6, 5, 4), _random(2, 8, 7, 4, seed=1)
    grouped = (2, 2, 3, 5, 4)

    def sums(x, padded):
        partial = _row_group_sums_in_one_pass(x, padded, 3, grouped)
        return ops.zeros((0,)) if partial is None else ops.stack(partial)

    out = ops.convert_to_numpy((_compiled(sums) if compile_it else sums)(x, padded))
    if not (BACKEND == "jax" or (BACKEND == "tensorflow" and compile_it)):
        assert out.shape == (0,)
        return
    expected = [
        (x * padded[:, i : i + 6, j : j + 5]).reshape(grouped).sum(axis=2)
        for i in range(3)
        for j in range(3)
    ]
    np.testing.assert_allclose(out, np.stack(expected), atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="only TensorFlow traces unknown sizes")
def test_shifted_depthwise_conv_gradients_with_sizes_unknown_while_tracing():
    # A model built for any input size traces its maps with unknown height and width.
    import tensorflow as tf

    x = _random(2, 8, 6, 4)
    kernel = _random(3, 3, 4, 1, seed=1)
    weights = _random(2, 8, 6, 4, seed=2)
    signature = [tf.TensorSpec((None, None, None, 4)), tf.TensorSpec((3, 3, 4, 1))]

    def gradients(fn):
        @tf.function(input_signature=signature, jit_compile=True)
        def grad(x, kernel):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                loss = ops.sum(fn(x, kernel) * weights)
            return tape.gradient(loss, [x, kernel])

        return [g.numpy() for g in grad(tf.constant(x), tf.constant(kernel))]

    def plain(x, kernel):
        return ops.depthwise_conv(x, kernel, strides=1, padding="same")

    for got, want in zip(gradients(shifted_depthwise_conv), gradients(plain)):
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("compile_it", [False, True])
@pytest.mark.parametrize("shape, size", [((2, 8, 12, 3), 4), ((1, 6, 6, 2), 3), ((2, 7, 9, 2), 2)])
def test_window_average_and_its_gradient_equal_average_pooling(shape, size, compile_it):
    # Under XLA on a CPU (JAX, compiled TensorFlow) it is a mean over reshaped windows;
    # sides that are not multiples of the size keep the pooling and drop the remainder.
    if not (BACKEND == "jax" or (BACKEND == "tensorflow" and compile_it)):
        pytest.skip("here window_average is ops.average_pool itself")
    x = _random(*shape)
    pooled = (shape[0], shape[1] // size, shape[2] // size, shape[3])
    weights = _random(*pooled, seed=1)

    def plain(x):
        return ops.average_pool(x, size, strides=size, padding="valid")

    def pool(x):
        return window_average(x, size)

    out = ops.convert_to_numpy((_compiled(pool) if compile_it else pool)(x))
    assert out.shape == pooled
    np.testing.assert_allclose(out, ops.convert_to_numpy(plain(x)), atol=1e-6)
    (got,) = _gradients(pool, (x,), weights, compile_it)
    (want,) = _gradients(plain, (x,), weights, compile_it=False)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("compile_it", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
# To more channels; to fewer (under TensorFlow's XLA, two halves of the positions,
# here an odd batch split across a sample); to fewer over an odd 5 x 5 map (one product).
@pytest.mark.parametrize("shape,out_channels", [((2, 5, 6, 4), 7), ((3, 5, 6, 8), 3), ((1, 5, 5, 8), 3)])
def test_channel_matmul_and_its_gradients_equal_matmuls(with_bias, compile_it, shape, out_channels):
    # Its gradient is written out (see channel_matmul), not left to autodiff.
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    arrays = (_random(*shape), _random(shape[-1], out_channels, seed=1))
    if with_bias:
        arrays += (_random(out_channels, seed=3),)
    weights = _random(*shape[:3], out_channels, seed=2)
    expected_out = arrays[0] @ arrays[1] + (arrays[2] if with_bias else 0)
    np.testing.assert_allclose(
        ops.convert_to_numpy(channel_matmul(*arrays)), expected_out, atol=1e-5
    )

    def plain(x, kernel, *bias):
        out = ops.matmul(x, kernel)
        return out + bias[0] if bias else out

    expected = _gradients(plain, arrays, weights, compile_it=False)
    actual = _gradients(channel_matmul, arrays, weights, compile_it)
    assert len(actual) == len(arrays)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-5)


def _optimized_hlo_of_kernel_gradient(x, kernel, weights):
    """XLA's optimised HLO of channel_matmul's kernel gradient, its input made by a SiLU."""

    def loss(x, kernel):
        return ops.sum(channel_matmul(keras.activations.silu(x), kernel) * weights)

    if BACKEND == "jax":
        import jax

        return jax.jit(jax.grad(loss, argnums=1)).lower(x, kernel).compile().as_text()
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def gradient(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            value = loss(x, kernel)
        return tape.gradient(value, kernel)

    return gradient.experimental_get_compiler_ir(x, kernel)(stage="optimized_hlo")


@pytest.mark.skipif(BACKEND == "torch", reason="XLA only: torch runs PointwiseDense as a convolution")
def test_channel_matmul_kernel_gradient_never_lays_the_input_out_transposed():
    # Contracted over the leading axes of the 4-D map, XLA copied the input into a
    # (channels, positions) layout, its producer fused into the copy; as matrices the
    # product reads it as it lies.
    x, kernel, weights = _random(2, 5, 6, 4), _random(4, 7, seed=1), _random(2, 5, 6, 7, seed=2)
    hlo = _optimized_hlo_of_kernel_gradient(
        ops.convert_to_tensor(x), ops.convert_to_tensor(kernel), ops.convert_to_tensor(weights)
    )
    assert "dot" in hlo
    assert "f32[4,60]" not in hlo


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the halves are TensorFlow's XLA only")
@pytest.mark.parametrize(
    "shape,out_channels,halves",
    [((3, 5, 6, 8), 3, True), ((1, 5, 5, 8), 3, False), ((2, 5, 6, 4), 7, False)],
)
def test_kernel_gradient_to_fewer_channels_runs_over_two_halves_of_the_positions(
    shape, out_channels, halves
):
    # See _kernel_gradient: a batched product over two halves, only where the product
    # goes to fewer channels and each sample has an even number of positions.
    x, kernel = _random(*shape), _random(shape[-1], out_channels, seed=1)
    weights = _random(*shape[:3], out_channels, seed=2)
    hlo = _optimized_hlo_of_kernel_gradient(
        ops.convert_to_tensor(x), ops.convert_to_tensor(kernel), ops.convert_to_tensor(weights)
    )
    assert ("lhs_batch_dims" in hlo) == halves


def _plain_group_norm(x, gamma, beta):
    mean, variance = ops.moments(x, axes=(1, 2, 3), keepdims=True)
    return (x - mean) / ops.sqrt(variance + 1e-6) * gamma + beta


@pytest.mark.parametrize("compile_it", [False, True])
@pytest.mark.parametrize("shape", [(2, 5, 6, 4), (3, 7, 7, 16)])
def test_group_norm_one_group_and_its_gradients_equal_autodiff(compile_it, shape):
    # Its gradient is written out (see group_norm_one_group), not left to autodiff.
    if compile_it and BACKEND == "torch":
        pytest.skip("the torch backend has no compiler to test here")
    channels = shape[-1]
    # A shift and scale far from 0 and 1, as a residual stream has.
    x = _random(*shape) * 3.0 + 2.0
    arrays = (x, _random(channels, seed=1), _random(channels, seed=2))
    weights = _random(*shape, seed=3)

    def written_out(x, gamma, beta):
        return group_norm_one_group(x, gamma, beta, 1e-6)

    tensors = [ops.convert_to_tensor(a) for a in arrays]
    np.testing.assert_allclose(
        ops.convert_to_numpy(written_out(*tensors)),
        ops.convert_to_numpy(_plain_group_norm(*tensors)),
        atol=1e-5,
    )
    _, mean, inverse_std = normalise_with_statistics(*tensors, 1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(mean)[:, 0, 0, 0], x.mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(inverse_std)[:, 0, 0, 0], 1 / np.sqrt(x.var(axis=(1, 2, 3)) + 1e-6),
        rtol=1e-4,
    )
    expected = _gradients(_plain_group_norm, arrays, weights, compile_it=False)
    actual = _gradients(written_out, arrays, weights, compile_it)
    assert len(actual) == len(arrays)
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def _largest_fusion_of_residual_chain_gradient(depth, norm):
    """Ops in the largest fused computation of XLA's gradient of `depth` residual blocks."""
    import jax

    x = _random(2, 6, 6, 8)
    kernels = [_random(8, 8, seed=seed) for seed in range(1, depth + 1)]

    def loss(x, kernels):
        for kernel in kernels:
            x = x + ops.matmul(norm(x, ops.ones((8,)), ops.zeros((8,))), kernel)
        return ops.sum(x * x)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernels).compile().as_text()
    sizes, size = [], None
    for line in hlo.splitlines():
        if line.startswith(("%fused", "fused")) and line.rstrip().endswith("{"):
            size = 0
        elif size is not None and line.startswith("}"):
            sizes.append(size)
            size = None
        elif size is not None:
            size += 1
    return max(sizes)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's autodiff of GroupNorm is where XLA fused the chain")
def test_group_norm_gradient_keeps_the_largest_xla_fusion_independent_of_depth():
    # With autodiff's GroupNorm gradient, XLA:CPU fused the residual gradient of
    # every later block into each consumer: the largest fusion grew with the depth.
    def autodiff(x, gamma, beta):
        return normalise_with_statistics(x, gamma, beta, 1e-6)[0]

    def written_out(x, gamma, beta):
        return group_norm_one_group(x, gamma, beta, 1e-6)

    assert _largest_fusion_of_residual_chain_gradient(
        6, autodiff
    ) > _largest_fusion_of_residual_chain_gradient(2, autodiff)
    assert _largest_fusion_of_residual_chain_gradient(
        6, written_out
    ) == _largest_fusion_of_residual_chain_gradient(2, written_out)

    # The GroupNorm layer takes the written-out gradient on JAX on a CPU.
    from hatnet_keras.layers import GroupNorm

    def layer(x, gamma, beta):  # a fresh layer has gamma 1 and beta 0, as above
        norm = GroupNorm(epsilon=1e-6)
        return norm(x)

    assert _largest_fusion_of_residual_chain_gradient(
        6, layer
    ) == _largest_fusion_of_residual_chain_gradient(2, layer)


@pytest.mark.skipif(BACKEND != "torch", reason="the eager torch backend's half-precision path")
@pytest.mark.parametrize("use_bias", [False, True])
def test_pointwise_dense_in_half_precision_on_torch_equals_dense(monkeypatch, use_bias):
    x = ops.convert_to_tensor(_random(2, 5, 6, 4), dtype="bfloat16")
    pointwise = PointwiseDense(7, use_bias=use_bias, dtype="mixed_bfloat16")
    dense = keras.layers.Dense(7, use_bias=use_bias, dtype="mixed_bfloat16")
    pointwise.build(x.shape)
    dense.build(x.shape)
    weights = [_random(*w.shape, seed=i + 1) for i, w in enumerate(dense.weights)]
    pointwise.set_weights(weights)
    dense.set_weights(weights)
    expected = ops.convert_to_numpy(ops.cast(dense(x), "float32"))
    # One PyTorch product, not Dense.call's keras.ops calls.
    monkeypatch.setattr(keras.layers.Dense, "call", _refused)
    out = pointwise(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(out, "float32")), expected,
                               rtol=2e-2, atol=2e-2)


def _refused(*args, **kwargs):
    raise AssertionError("Dense.call was called")


@pytest.mark.parametrize("use_bias", [False, True])
def test_pointwise_dense_equals_dense_and_round_trips(use_bias):
    # A 1x1 convolution on torch, a channel_matmul under XLA (compiled here on
    # TensorFlow and JAX); everywhere it must be a Dense layer.
    x = _random(2, 5, 6, 4)
    pointwise = PointwiseDense(7, use_bias=use_bias)
    dense = keras.layers.Dense(7, use_bias=use_bias)
    pointwise.build(x.shape)
    dense.build(x.shape)
    weights = [_random(*w.shape, seed=i + 1) for i, w in enumerate(dense.weights)]
    pointwise.set_weights(weights)
    dense.set_weights(weights)
    np.testing.assert_allclose(
        ops.convert_to_numpy(_compiled(pointwise)(x)), ops.convert_to_numpy(dense(x)), atol=1e-5
    )
    clone = PointwiseDense.from_config(pointwise.get_config())
    assert clone.get_config() == pointwise.get_config()


def _silu_input_gradient(fn, x, upstream):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x, output_gradients=tf.convert_to_tensor(upstream))
    if BACKEND == "jax":
        import jax

        y, pullback = jax.vjp(fn, x)
        return y, pullback(upstream)[0]
    import torch

    x = torch.tensor(x, requires_grad=True)
    y = fn(x)
    y.backward(torch.tensor(upstream))
    return y, x.grad


@pytest.mark.parametrize("graph", [False, True])
def test_silu_and_its_gradient_equal_the_closed_form(graph):
    x = _random(2, 5, 6, 8) * 4
    upstream = _random(2, 5, 6, 8, seed=1)
    if graph and BACKEND == "tensorflow":
        import tensorflow as tf

        y, grad = tf.function(lambda x, u: _silu_input_gradient(silu, x, u))(x, upstream)
    else:
        y, grad = _silu_input_gradient(silu, x, upstream)
    # In float64: x * sigmoid(x), and its derivative sigmoid(x) * (1 + x * (1 - sigmoid(x))).
    sigmoid = 1 / (1 + np.exp(-x.astype("float64")))
    expected_y = x * sigmoid
    expected_grad = upstream * sigmoid * (1 + x * (1 - sigmoid))
    np.testing.assert_allclose(ops.convert_to_numpy(y), expected_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ops.convert_to_numpy(grad), expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the compiled gradient is TensorFlow's")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_silu_gradient_in_half_precision_is_float32_rounded_once(dtype):
    # XLA:CPU ran the compiled gradient's ops in half precision one by one, each rounded
    # (and slower); it is computed in float32 from the half-precision x, y and upstream
    # gradient, and rounded at the end.
    import tensorflow as tf

    x = tf.cast(_random(4, 9, 7, 64) * 4, dtype)
    upstream = tf.cast(_random(4, 9, 7, 64, seed=1), dtype)
    y, grad = tf.function(lambda x, u: _silu_input_gradient(silu, x, u))(x, upstream)
    assert grad.dtype == x.dtype
    x32, y32, up32 = (tf.cast(t, "float32").numpy() for t in (x, y, upstream))
    sigmoid = 1 / (1 + np.exp(-x32))
    want = tf.cast(up32 * (y32 + sigmoid * (1 - y32)), dtype)
    got, want = (tf.cast(t, "float32").numpy() for t in (grad, want))
    unit = 2.0 ** (-7 if dtype == "bfloat16" else -10)
    # numpy's and XLA's float32 sigmoids may differ in the last bit: a value can round the other way.
    assert np.mean(got == want) > 0.97
    np.testing.assert_allclose(got, want, rtol=unit, atol=unit * 1e-2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the compiled gradient is TensorFlow's")
def test_silu_gradient_is_compiled_by_xla_in_a_tensorflow_graph_only():
    import tensorflow as tf

    def gradient_graph(jit_compile):
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = silu(x)
            return tape.gradient(y, x)

        function = tf.function(step, jit_compile=jit_compile)
        return function.get_concrete_function(tf.TensorSpec((2, 4), "float32")).graph

    def compiled_calls(graph):
        # The gradient's call of a function that XLA must compile, and what that function runs.
        calls = [
            node for node in graph.as_graph_def().node
            if node.attr["_XlaMustCompile"].b and "PartitionedCall" in node.op
        ]
        library = {f.signature.name: f for f in graph.as_graph_def().library.function}
        return [
            {op.op for op in library[call.attr["f"].func.name].node_def} for call in calls
        ]

    (ops_run,) = compiled_calls(gradient_graph(jit_compile=False))
    assert "Sigmoid" in ops_run
    # Inside XLA the whole function is compiled anyway: autodiff's gradient, no inner call.
    assert compiled_calls(gradient_graph(jit_compile=True)) == []
