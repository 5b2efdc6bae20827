"""Which attention kernels HAT-Net runs on the current Keras backend: fused (flash) or not.

Builds a HAT-Net variant under a dtype policy, runs an inference forward pass
and a training-mode gradient, and reports what carried the attention:

  jax     the custom calls in the optimised HLO of the compiled forward pass and
          gradient; cuDNN's fused attention shows up as `__cudnn$fmha...` calls
  torch   the scaled-dot-product-attention operators that ran, from torch's
          profiler (`aten::_scaled_dot_product_flash_attention` and so on)
  tensorflow  has no fused attention kernel: the attention is two batched
          matrix products, and the script says so

next to the number of attention steps in the model (a local and a global step
per block, the global step alone where the grid size is 1). Prints one JSON line.

Example:
    KERAS_BACKEND=jax python scripts/attention_kernels.py --variant small --batch 8 \\
        --precision mixed_bfloat16
"""

import argparse
import collections
import json
import re
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import benchmark  # noqa: E402  (also puts this tree's hatnet_keras first on the path)


def attention_steps(arch):
    """Attention calls in one forward pass: 2 per block, 1 where the grid size is 1."""
    return sum(depth * (1 if grid == 1 else 2)
               for depth, grid in zip(arch["depths"], arch["grid_sizes"]))


def jax_custom_calls(model, images):
    """{"forward": Counter, "gradient": Counter} of custom-call targets in the optimised HLO."""
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def forward(trainable, inputs, training=False):
        outputs, _ = model.stateless_call(trainable, non_trainable, inputs, training=training)
        return outputs

    def loss(trainable, inputs):  # as in training: dropout and stochastic depth on
        return jnp.mean(jnp.square(forward(trainable, inputs, True).astype("float32")))

    counts = {}
    for name, function in (("forward", forward), ("gradient", jax.grad(loss))):
        text = jax.jit(function).lower(trainable, images).compile().as_text()
        counts[name] = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    return counts


def torch_attention_operators(model, images):
    """Counter of the scaled-dot-product-attention operators of one forward and backward pass."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    x = torch.as_tensor(images, device=next(iter(model.parameters())).device)
    with profile(activities=activities) as profiler:
        model(x, training=False).float().square().mean().backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    counts = collections.Counter()
    for event in profiler.key_averages():
        if "scaled_dot_product" in event.key or "flash" in event.key.lower():
            counts[event.key] += event.count
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="small", choices=benchmark.VARIANTS)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args(argv)

    import keras

    backend = keras.config.backend()
    config = benchmark.make_config(args.variant, backend, args.precision, batch=args.batch,
                                   image_size=args.image_size)
    model = benchmark.build_keras_model(config)
    images, _ = benchmark.random_batch(config)
    result = {"backend": backend, "variant": args.variant, "precision": args.precision,
              "batch": args.batch, "image_size": args.image_size,
              "attention_steps": attention_steps(benchmark.architecture(config))}
    if backend == "jax":
        import jax

        calls = jax_custom_calls(model, images)
        result["device"] = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
        result["custom_calls"] = {name: dict(counter) for name, counter in calls.items()}
        result["fused_attention_calls"] = {
            name: sum(n for target, n in counter.items() if "fmha" in target)
            for name, counter in calls.items()
        }
    elif backend == "torch":
        import torch

        result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        result["attention_operators"] = dict(torch_attention_operators(model, images))
    else:
        result["note"] = ("TensorFlow has no fused attention kernel; hatnet-keras runs the "
                          "attention as two batched matrix products there")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
