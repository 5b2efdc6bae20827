"""Each HAT-Net layer: build, symbolic and eager shapes, config round trip, and its arithmetic."""

import numpy as np
import pytest

import keras
from keras import ops

from hatnet_keras.layers import (
    ConvFFN,
    Downsample,
    DropPath,
    GlobalAttention,
    GroupNorm,
    HATBlock,
    HierarchicalAttention,
    LocalWindowAttention,
    MergePooling,
    Stem,
)

# name -> (factory, input shapes, output shape, number of weights)
CASES = {
    "group_norm": (lambda: GroupNorm(), [(2, 9, 7, 16)], (2, 9, 7, 16), 2),
    "local_window_attention": (
        lambda: LocalWindowAttention(grid_size=7, num_heads=2),
        [(2, 10, 9, 48)],
        (2, 10, 9, 16),
        0,
    ),
    "merge_pooling": (lambda: MergePooling(pool_ratio=4), [(2, 10, 9, 16)], (2, 3, 3, 32), 4),
    "global_attention": (
        lambda: GlobalAttention(num_heads=2),
        [(2, 10, 9, 16), (2, 3, 3, 32)],
        (2, 10, 9, 16),
        0,
    ),
    "hierarchical_attention": (
        lambda: HierarchicalAttention(head_dim=8, grid_size=7, pool_ratio=2),
        [(2, 10, 9, 16)],
        (2, 10, 9, 16),
        14,
    ),
    "hierarchical_attention_global": (
        lambda: HierarchicalAttention(head_dim=8, grid_size=1, pool_ratio=1),
        [(2, 5, 4, 16)],
        (2, 5, 4, 16),
        6,
    ),
    "conv_ffn": (lambda: ConvFFN(expansion=2, kernel_size=5), [(2, 10, 9, 16)], (2, 10, 9, 16), 7),
    "hat_block": (
        lambda: HATBlock(
            head_dim=8, grid_size=7, pool_ratio=2, expansion=2, kernel_size=3, drop_path_rate=0.1
        ),
        [(2, 10, 9, 16)],
        (2, 10, 9, 16),
        21,
    ),
    "drop_path": (lambda: DropPath(0.2, seed=3), [(2, 4, 4, 8)], (2, 4, 4, 8), 0),
    "stem": (lambda: Stem(16, min_size=32), [(2, 33, 40, 3)], (2, 9, 10, 16), 6),
    "downsample": (lambda: Downsample(32), [(2, 9, 10, 16)], (2, 5, 5, 32), 4),
}


def _inputs(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for shape in shapes]


@pytest.mark.parametrize("case", sorted(CASES))
def test_symbolic_and_eager_shapes_agree(case):
    factory, shapes, expected, num_weights = CASES[case]
    layer = factory()
    symbolic = layer(*[keras.KerasTensor(shape) for shape in shapes])
    assert tuple(symbolic.shape) == expected
    assert len(layer.weights) == num_weights

    eager = layer(*_inputs(shapes))
    assert tuple(eager.shape) == expected
    assert np.all(np.isfinite(ops.convert_to_numpy(eager)))
    assert tuple(layer.compute_output_shape(*shapes)) == expected


@pytest.mark.parametrize("case", ["hierarchical_attention", "merge_pooling", "stem", "hat_block"])
def test_symbolic_unknown_spatial_size(case):
    factory, shapes, expected, _ = CASES[case]
    unknown = [(None, None, None, shape[-1]) for shape in shapes]
    out = factory()(*[keras.KerasTensor(shape) for shape in unknown])
    assert tuple(out.shape) == (None, None, None, expected[-1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip_rebuilds_the_same_layer(case):
    factory, shapes, _, _ = CASES[case]
    layer = factory()
    inputs = _inputs(shapes)
    expected = ops.convert_to_numpy(layer(*inputs))
    config = layer.get_config()

    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config

    clone(*inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(clone(*inputs)), expected, atol=1e-6)


def test_group_norm_normalises_each_sample_over_height_width_and_channels():
    x = _inputs([(3, 5, 6, 4)])[0] * 3.0 + 2.0
    norm = GroupNorm(epsilon=1e-6)
    norm.build(x.shape)
    gamma = np.array([1.0, 2.0, 0.5, -1.0], "float32")
    beta = np.array([0.0, 1.0, -1.0, 3.0], "float32")
    norm.set_weights([gamma, beta])
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-6) * gamma + beta
    np.testing.assert_allclose(ops.convert_to_numpy(norm(x)), expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_group_norm_takes_half_precision_maps_and_keeps_float32_statistics(policy):
    # Squares of values near 1000 overflow float16 (max 65504): statistics taken in
    # the compute dtype would be inf or NaN.
    rng = np.random.default_rng(4)
    x = (1000.0 + 50.0 * rng.standard_normal((2, 4, 5, 8))).astype("float32")
    norm = GroupNorm(epsilon=1e-6, dtype=policy)
    half = ops.cast(x, policy.split("_")[1])
    out = norm(half)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    assert {v.dtype for v in norm.weights} == {"float32"}
    rounded = ops.convert_to_numpy(ops.cast(half, "float32"))
    mean = rounded.mean(axis=(1, 2, 3), keepdims=True)
    expected = (rounded - mean) / np.sqrt(rounded.var(axis=(1, 2, 3), keepdims=True) + 1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(out, "float32")), expected, atol=0.03)


def _softmax_attention(q, k, v, scale):
    logits = q @ k.T * scale
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


def _local_reference(qkv, grid, heads):
    """Windows clipped at the map's edge: exactly the real tokens of each padded window."""
    batch, height, width, channels3 = qkv.shape
    channels = channels3 // 3
    head_dim = channels // heads
    out = np.zeros((batch, height, width, channels), "float32")
    for b in range(batch):
        for top in range(0, height, grid):
            for left in range(0, width, grid):
                window = qkv[b, top : top + grid, left : left + grid]
                rows, cols = window.shape[:2]
                tokens = window.reshape(rows * cols, 3, heads, head_dim)
                for h in range(heads):
                    q, k, v = tokens[:, 0, h], tokens[:, 1, h], tokens[:, 2, h]
                    y = _softmax_attention(q, k, v, head_dim**-0.5)
                    out[b, top : top + rows, left : left + cols, h * head_dim : (h + 1) * head_dim] = (
                        y.reshape(rows, cols, head_dim)
                    )
    return out


@pytest.mark.parametrize("size", [(14, 7), (10, 9), (3, 12)])
def test_local_step_masks_padding_out_of_every_window(size):
    # Windows cut by the map's edge must attend over their real tokens only.
    qkv = _inputs([(2, *size, 3 * 16)], seed=1)[0]
    layer = LocalWindowAttention(grid_size=7, num_heads=2)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(qkv)), _local_reference(qkv, 7, 2), atol=1e-5
    )


def test_merge_step_averages_partial_windows_over_covered_pixels():
    x = _inputs([(2, 10, 7, 8)], seed=2)[0]
    merge = MergePooling(pool_ratio=4)
    pooled = ops.convert_to_numpy(merge.pool(x))
    expected = np.stack(
        [
            np.stack([x[:, i : i + 4, j : j + 4].mean(axis=(1, 2)) for j in range(0, 7, 4)], 1)
            for i in range(0, 10, 4)
        ],
        1,
    )
    assert pooled.shape == (2, 3, 2, 8)
    np.testing.assert_allclose(pooled, expected, atol=1e-5)


def test_global_step_is_softmax_attention_per_head():
    query, key_value = _inputs([(1, 3, 4, 8), (1, 2, 2, 16)], seed=3)
    out = ops.convert_to_numpy(GlobalAttention(num_heads=2)(query, key_value))
    q = query.reshape(12, 2, 4)
    kv = key_value.reshape(4, 2, 2, 4)
    for h in range(2):
        expected = _softmax_attention(q[:, h], kv[:, 0, h], kv[:, 1, h], 4**-0.5)
        np.testing.assert_allclose(out.reshape(12, 2, 4)[:, h], expected, atol=1e-5)


def test_drop_path_keeps_or_drops_whole_samples_and_is_identity_at_inference():
    x = np.ones((64, 3, 3, 2), "float32")
    drop = DropPath(0.5, seed=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(drop(x, training=False)), x)
    out = ops.convert_to_numpy(drop(x, training=True))
    per_sample = out.reshape(64, -1)
    assert np.all((per_sample == 0.0) | (per_sample == 2.0))
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert 8 < (per_sample[:, 0] == 0).sum() < 56


def test_unseeded_drop_path_drops_whole_samples_with_the_expected_scale():
    x = np.ones((256, 2, 2, 3), "float32")
    out = ops.convert_to_numpy(DropPath(0.25)(x, training=True)).reshape(256, -1)
    assert np.all(out.min(axis=1) == out.max(axis=1))
    np.testing.assert_allclose(np.unique(out), [0.0, 1.0 / 0.75], rtol=1e-6)
    assert 32 < (out[:, 0] == 0).sum() < 96


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch's host-device reads")
def test_unseeded_drop_path_never_reads_a_device_value_back_on_torch():
    # A read back (aten::item) blocks the host until the GPU has caught up; a
    # seeded draw makes one per call to derive its torch.Generator's seed.
    from torch.profiler import ProfilerActivity, profile

    drop, seeded = DropPath(0.1), DropPath(0.1, seed=3)
    x = ops.ones((4, 3, 3, 2))
    with profile(activities=[ProfilerActivity.CPU]) as unseeded_run:
        drop(x, training=True)
    with profile(activities=[ProfilerActivity.CPU]) as seeded_run:
        seeded(x, training=True)

    def reads(run):
        return sum(event.name == "aten::item" for event in run.events())

    assert reads(seeded_run) > 0  # the check can see a read back
    assert reads(unseeded_run) == 0


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="odd"):
        ConvFFN(expansion=2, kernel_size=4)
    with pytest.raises(ValueError, match="rate"):
        DropPath(1.0)
    with pytest.raises(ValueError, match="head_dim"):
        HierarchicalAttention(head_dim=6, grid_size=7, pool_ratio=2)(np.zeros((1, 7, 7, 16)))
    with pytest.raises(ValueError, match="at least 32"):
        Stem(16, min_size=32)(np.zeros((1, 16, 40, 3), "float32"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_attention_matches_float32(dtype):
    from hatnet_keras.layers.attention import attend

    q, k, v = _inputs([(2, 2, 6, 4), (2, 2, 5, 4), (2, 2, 5, 4)], seed=4)
    mask = np.ones((2, 1, 1, 5), bool)
    mask[:, :, :, -2:] = False
    expected = ops.convert_to_numpy(attend(q, k, v, 0.5, mask=mask))
    half = attend(*(ops.cast(t, dtype) for t in (q, k, v)), 0.5, mask=mask)
    assert keras.backend.standardize_dtype(half.dtype) == dtype
    np.testing.assert_allclose(ops.convert_to_numpy(ops.cast(half, "float32")), expected, atol=5e-2)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's CPU attention kernel")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_attention_on_cpu_differentiates_in_float32(monkeypatch, dtype):
    # PyTorch's CPU flash attention backward is about 7x slower in bfloat16 than in
    # float32: with a gradient to take, attend runs it in float32 and rounds the output.
    import torch

    from hatnet_keras.layers.attention import attend

    arrays = _inputs([(2, 2, 6, 4), (2, 2, 5, 4), (2, 2, 5, 4)], seed=6)
    mask = torch.ones((2, 1, 1, 5), dtype=torch.bool)
    mask[..., -1] = False
    half = [torch.tensor(a).to(getattr(torch, dtype)).requires_grad_() for a in arrays]
    out = attend(*half, 0.5, mask=mask)
    assert out.dtype == getattr(torch, dtype)
    rounding = out.grad_fn  # the cast back to half precision, then the float32 kernel
    assert rounding.name() == "ToCopyBackward0"
    kernel = rounding.next_functions[0][0]
    assert "ScaledDotProduct" in kernel.name()
    out.float().square().sum().backward()

    full = [t.detach().float().requires_grad_() for t in half]
    reference = torch.nn.functional.scaled_dot_product_attention(*full, attn_mask=mask, scale=0.5)
    np.testing.assert_array_equal(out.float().detach().numpy(), reference.to(out.dtype).float().detach().numpy())
    reference.to(out.dtype).float().square().sum().backward()
    for got, want in zip(half, full):
        assert got.grad.dtype == got.dtype
        np.testing.assert_allclose(got.grad.float().numpy(), want.grad.numpy(), rtol=2e-2, atol=2e-2)

    kernel_dtypes = []
    kernel = torch.nn.functional.scaled_dot_product_attention

    def recording_kernel(query, *args, **kwargs):
        kernel_dtypes.append(query.dtype)
        return kernel(query, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_kernel)
    with torch.no_grad():  # inference keeps the half-precision kernel
        assert attend(*half, 0.5, mask=mask).dtype == getattr(torch, dtype)
    assert kernel_dtypes == [getattr(torch, dtype)]


def _numpy_attention(q, k, v, scale, mask):
    logits = np.einsum("bnth,bnsh->bnts", q, k) * scale
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bnts,bnsh->bnth", weights, v)


@pytest.mark.parametrize("batched_products", [True, False])
def test_both_attention_formulations_match_numpy(monkeypatch, batched_products):
    # Each backend takes one of the two formulations; both are checked on every backend.
    from hatnet_keras.layers import attention

    monkeypatch.setattr(attention, "_batched_products_run_best", lambda: batched_products)
    q, k, v = _inputs([(2, 3, 6, 4), (2, 3, 5, 4), (2, 3, 5, 4)], seed=5)
    mask = np.ones((2, 1, 1, 5), bool)
    mask[1, :, :, :2] = False
    out = ops.convert_to_numpy(attention.attend(q, k, v, 0.5, mask=mask))
    np.testing.assert_allclose(out, _numpy_attention(q, k, v, 0.5, mask), atol=1e-5)


def test_flash_attention_setting_sends_odd_lengths_in_training_to_xla_on_jax():
    from hatnet_keras.layers.attention import flash_attention_setting

    on_jax = keras.backend.backend() == "jax"
    assert flash_attention_setting(49, 49, training=True) is (False if on_jax else None)
    assert flash_attention_setting(3136, 49, training=True) is (False if on_jax else None)
    assert flash_attention_setting(64, 64, training=True) is None
    assert flash_attention_setting(49, 49, training=False) is None
    assert flash_attention_setting(49, 49) is None
    assert flash_attention_setting(None, None, training=True) is None


def test_training_flag_reaches_both_attention_steps(monkeypatch):
    # The fused path is taken (as on a GPU) and every setting asked for is recorded.
    from hatnet_keras.layers import attention

    monkeypatch.setattr(attention, "_batched_products_run_best", lambda: False)
    # On torch, through Keras' dot_product_attention too, not PyTorch's kernel directly.
    monkeypatch.setattr(attention.eager, "is_torch_tensor", lambda x: False)
    asked = []
    real = attention.flash_attention_setting

    def recording(query_tokens, key_tokens, training=None):
        asked.append((query_tokens, key_tokens, training))
        return real(query_tokens, key_tokens, training)

    monkeypatch.setattr(attention, "flash_attention_setting", recording)
    layer = HierarchicalAttention(head_dim=8, grid_size=7, pool_ratio=2)
    x = _inputs([(2, 14, 14, 16)], seed=6)[0]
    out_training = ops.convert_to_numpy(layer(x, training=True))
    assert asked == [(49, 49, True), (196, 49, True)]  # local windows, then global over pooled
    asked.clear()
    out_inference = ops.convert_to_numpy(layer(x, training=False))
    assert asked == [(49, 49, False), (196, 49, False)]
    np.testing.assert_allclose(out_training, out_inference, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="reads XLA's compiled gradient on JAX")
def test_local_step_gradient_concatenates_q_k_v_instead_of_padding_each():
    # q, k and v are split from the packed windows, not indexed: the gradient of
    # indexing is one zero-padded full-size copy per part (see attention._unpack).
    import jax

    local = LocalWindowAttention(grid_size=7, num_heads=2)
    qkv = np.random.default_rng(0).standard_normal((2, 14, 14, 3 * 16)).astype("float32")
    local.build(qkv.shape)

    def loss(qkv):
        return ops.sum(local(qkv) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(qkv).compile().as_text()
    assert " pad(" not in hlo
    assert "concatenate(" in hlo
