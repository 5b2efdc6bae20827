"""The learning-rate schedule of the HAT-Net recipe: linear warm-up, then cosine decay."""

import math

import keras
from keras import ops

# The recipe's reference batch: learning rate = base x batch / 512.
REFERENCE_BATCH_SIZE = 512
BASE_LEARNING_RATE = 5e-4


def scaled_learning_rate(batch_size, base_learning_rate=BASE_LEARNING_RATE):
    """The recipe's peak learning rate for a total batch size: `base x batch / 512`.

    Example:
    >>> from hatnet_keras.training import scaled_learning_rate
    >>> scaled_learning_rate(1024)
    0.001
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    return base_learning_rate * batch_size / REFERENCE_BATCH_SIZE


@keras.saving.register_keras_serializable(package="hatnet_keras")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `warmup_learning_rate` to `peak_learning_rate`, then cosine decay.

    Over the first `warmup_steps` optimizer steps the rate rises linearly from
    `warmup_learning_rate` to `peak_learning_rate`; over the remaining
    `total_steps - warmup_steps` it follows half a cosine down to
    `final_learning_rate`, and stays there after `total_steps`. This is the
    recipe's per-epoch schedule (5 warm-up epochs from 1e-6, cosine to 1e-5)
    evaluated per step, so it moves smoothly within an epoch.

    Args:
        peak_learning_rate: rate at the end of the warm-up.
        total_steps: optimizer steps of the whole run (epochs x steps per epoch).
        warmup_steps: steps of linear warm-up (0: start at the peak).
        warmup_learning_rate: rate at step 0.
        final_learning_rate: rate at `total_steps` and after.
        name: optional name.

    Example:
    >>> import keras
    >>> from hatnet_keras.training import WarmupCosineDecay
    >>> schedule = WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=10)
    >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    >>> round(float(schedule(10)), 6), round(float(schedule(100)), 6)
    (0.001, 1e-05)
    """

    def __init__(
        self,
        peak_learning_rate,
        total_steps,
        warmup_steps=0,
        warmup_learning_rate=1e-6,
        final_learning_rate=1e-5,
        name="warmup_cosine_decay",
    ):
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive; got {total_steps}.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}]; got {warmup_steps}."
            )
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_learning_rate = warmup_learning_rate
        self.final_learning_rate = final_learning_rate
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_learning_rate
        warmup_fraction = step / max(self.warmup_steps, 1)
        warmup = self.warmup_learning_rate + (peak - self.warmup_learning_rate) * warmup_fraction
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = self.final_learning_rate + 0.5 * (peak - self.final_learning_rate) * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_learning_rate": self.warmup_learning_rate,
            "final_learning_rate": self.final_learning_rate,
            "name": self.name,
        }
