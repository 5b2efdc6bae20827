"""AdamW as the HAT-Net recipe uses it: weight decay on weight matrices and kernels only."""

import keras

WEIGHT_DECAY = 0.05
EPSILON = 1e-8


def no_decay_variables(model):
    """The trainable variables the recipe keeps out of weight decay: every 1-D variable.

    In HAT-Net these are the biases of convolutions and dense layers and the
    GroupNorm `gamma`/`beta`; kernels (2-D and up) are decayed.

    Example:
    >>> import keras
    >>> from hatnet_keras.layers import GroupNorm
    >>> from hatnet_keras.training import no_decay_variables
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3), GroupNorm()])
    >>> sorted(v.name for v in no_decay_variables(model))
    ['beta', 'bias', 'gamma']
    """
    return [variable for variable in model.trainable_variables if len(variable.shape) <= 1]


def build_optimizer(
    model,
    learning_rate,
    weight_decay=WEIGHT_DECAY,
    epsilon=EPSILON,
    global_clipnorm=None,
):
    """`keras.optimizers.AdamW` for `model`, with biases and norm parameters not decayed.

    Args:
        model: the model the optimizer will train (its 1-D trainable
            variables are excluded from weight decay; build it first).
        learning_rate: a float or a `LearningRateSchedule`
            (e.g. `WarmupCosineDecay`).
        weight_decay: decoupled weight decay (recipe: 0.05).
        epsilon: Adam epsilon (recipe: 1e-8).
        global_clipnorm: optional clipping of the global gradient norm
            (the recipe's larger models use 1.0).

    Returns:
        The optimizer; pass it to `model.compile`. Under the `mixed_float16`
        policy `compile` wraps it in a `LossScaleOptimizer` by itself.

    Example:
    >>> import keras
    >>> from hatnet_keras.training import WarmupCosineDecay, build_optimizer
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3)])
    >>> schedule = WarmupCosineDecay(5e-4, total_steps=1000, warmup_steps=50)
    >>> model.compile(optimizer=build_optimizer(model, schedule), loss="mse")
    >>> model.optimizer.weight_decay, model.optimizer.epsilon
    (0.05, 1e-08)
    """
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        epsilon=epsilon,
        global_clipnorm=global_clipnorm,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer
