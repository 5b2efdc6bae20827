"""A few `keras.ops` calls made without Keras' dispatch on the eager torch backend.

In eager mode every `keras.ops` call costs host time on top of PyTorch's own op,
and on a GPU the step is only as fast as the host can issue its ops. The layout
and dtype calls of HAT-Net's layers are the dearest relative to their work: on a
2-core Intel Xeon `ops.reshape` took 49 us against 2.5 us for `torch.reshape`
(it flattens the new shape looking for symbolic tensors), `ops.transpose` 15 us
against 6 us for `Tensor.permute`. A forward pass of HAT-Net-Small made about 190
reshapes and 410 transposes.

Each function here takes the arguments of its `keras.ops` namesake. Given a torch
tensor (or a variable, for `cast`) on the torch backend, it calls the PyTorch op
that Keras' torch backend would call, with the same result; on every other
backend, and for symbolic `KerasTensor`s, it is the `keras.ops` call itself.

Example:
>>> import keras
>>> from hatnet_keras.layers.eager import reshape, transpose
>>> x = keras.ops.ones((2, 3, 4))
>>> tuple(transpose(reshape(x, (6, 4)), (1, 0)).shape)
(4, 6)
"""

import keras
from keras import ops


def is_torch_tensor(x):
    """True for a torch tensor on the torch backend (the only case handled natively)."""
    if keras.backend.backend() != "torch":
        return False
    import torch  # loaded already by the torch backend

    return isinstance(x, torch.Tensor)


def reshape(x, newshape):
    """`keras.ops.reshape`."""
    if is_torch_tensor(x):
        return x.reshape((newshape,) if isinstance(newshape, int) else tuple(newshape))
    return ops.reshape(x, newshape)


def transpose(x, axes):
    """`keras.ops.transpose` with the axes given."""
    if is_torch_tensor(x):
        return x.permute(*axes)
    return ops.transpose(x, axes)


def squeeze(x, axis):
    """`keras.ops.squeeze` of one axis."""
    if is_torch_tensor(x):
        return x.squeeze(axis)
    return ops.squeeze(x, axis=axis)


def split(x, indices_or_sections, axis=0):
    """`keras.ops.split`: into equal sections (an int) or at the given indices, as a list."""
    if not is_torch_tensor(x):
        return ops.split(x, indices_or_sections, axis=axis)
    size = x.shape[axis]
    if isinstance(indices_or_sections, int):
        if size % indices_or_sections:
            raise ValueError(
                f"Cannot split axis {axis} of size {size} into {indices_or_sections} "
                "equal sections."
            )
        sizes = size // indices_or_sections
    else:
        bounds = [0, *indices_or_sections, size]
        sizes = [end - start for start, end in zip(bounds, bounds[1:])]
    # torch.split, as Keras: its gradient is one concatenation of the parts'.
    return list(x.split(sizes, dim=axis))


def cast(x, dtype):
    """`keras.ops.cast`; a variable is read (and autocast, in an autocast scope) first."""
    if isinstance(x, keras.Variable) and keras.backend.backend() == "torch":
        x = x.value
    if is_torch_tensor(x):
        import torch

        target = getattr(torch, keras.backend.standardize_dtype(dtype))
        return x if x.dtype == target else x.to(target)
    return ops.cast(x, dtype)


def silu(x):
    """`keras.ops.silu` (also `keras.activations.silu`)."""
    if is_torch_tensor(x):
        import torch

        return torch.nn.functional.silu(x)
    return ops.silu(x)
