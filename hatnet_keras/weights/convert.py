"""Conversion of the authors' PyTorch checkpoints into HAT-Net Keras models, by name.

Every checkpoint key is either mapped to one Keras variable, addressed by its
path (`stage1_block1/attn/qkv/kernel`), or skipped on purpose (the unused
`proj_norm`, or the classifier of a model built without its head). Nothing is
assigned until the whole checkpoint has been checked: a missing, unexpected or
mis-shaped key raises one `CheckpointMismatchError` listing all of them.
"""

import dataclasses
import re

import numpy as np

from hatnet_keras.model import block_name, downsample_name


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model; lists every missing, unexpected and mis-shaped key."""

    def __init__(self, missing, unexpected, mismatched):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        lines = ["The checkpoint does not fit the model; no weight was loaded."]
        if self.missing:
            lines.append(
                f"Missing ({len(self.missing)} model variables with no checkpoint key):"
            )
            lines += [f"  {path}" for path in self.missing]
        if self.unexpected:
            lines.append(
                f"Unexpected ({len(self.unexpected)} checkpoint keys the model has no place for):"
            )
            lines += [f"  {key}" for key in self.unexpected]
        if self.mismatched:
            lines.append(f"Mis-shaped ({len(self.mismatched)}):")
            lines += [
                f"  {key} {tuple(src)} -> {path} expects {tuple(dst)}"
                for key, path, src, dst in self.mismatched
            ]
        super().__init__("\n".join(lines))


# Layout changes from PyTorch to Keras, channels-last.
def _conv(w):  # (out, in, kh, kw) -> (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _pointwise(w):  # 1x1 conv (out, in, 1, 1) -> dense (in, out)
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ValueError("not a 1x1 convolution")
    return np.transpose(w[:, :, 0, 0])


def _depthwise(w):  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
    return np.transpose(w, (2, 3, 0, 1))


def _linear(w):  # (out, in) -> (in, out)
    return np.transpose(w)


def _same(w):
    return w


_NORM = {"weight": ("gamma", _same), "bias": ("beta", _same)}
_CONV = {"weight": ("kernel", _conv), "bias": ("bias", _same)}
_POINTWISE = {"weight": ("kernel", _pointwise), "bias": ("bias", _same)}

# Checkpoint module (below a block's prefix) -> (Keras layer path, parameter rules).
_BLOCK_MODULES = {
    "attn.norm": ("attn/norm", _NORM),
    "attn.qkv": ("attn/qkv", _POINTWISE),
    "attn.grid_norm": ("attn/grid_norm", _NORM),
    "attn.ds_norm": ("attn/merge/ds_norm", _NORM),
    "attn.kv": ("attn/merge/kv", _POINTWISE),
    "attn.q": ("attn/q", _POINTWISE),
    "attn.proj": ("attn/proj", _POINTWISE),
    "conv.conv1.0": ("ffn/norm", _NORM),
    "conv.conv1.1": ("ffn/expand", _POINTWISE),
    "conv.conv2.0": ("ffn/depthwise", {"weight": ("kernel", _depthwise)}),
    "conv.conv3.0": ("ffn/project", _POINTWISE),
    "conv.conv3.1": ("ffn/project_norm", _NORM),
}
_TOP_MODULES = {
    "patch_embed.0": ("stem/conv1", _CONV),
    "patch_embed.1": ("stem/norm", _NORM),
    "patch_embed.3": ("stem/conv2", _CONV),
    "classifier.1": ("predictions", {"weight": ("kernel", _linear), "bias": ("bias", _same)}),
}
for _stage in (1, 2, 3):
    _TOP_MODULES[f"ds{_stage + 1}.conv"] = (f"{downsample_name(_stage)}/conv", _CONV)
    _TOP_MODULES[f"ds{_stage + 1}.norm"] = (f"{downsample_name(_stage)}/norm", _NORM)

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.(weight|bias)")
_TOP_KEY = re.compile(r"(.+)\.(weight|bias)")
# Created by the reference in every attention module and never called.
_UNUSED = re.compile(r"blocks\.\d+\.\d+\.attn\.proj_norm\.(weight|bias)")
HEAD_PREFIX = "classifier."
PREPROCESSING_LAYER = "preprocessing"


def keras_target(key):
    """(Keras variable path, layout transform) for a checkpoint key, or None if it has none.

    Example:
    >>> from hatnet_keras.weights import keras_target
    >>> keras_target("blocks.0.1.attn.qkv.weight")[0]
    'stage1_block2/attn/qkv/kernel'
    """
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        stage, index, module, param = match.groups()
        rule = _BLOCK_MODULES.get(module)
        prefix = block_name(int(stage), int(index))
    else:
        match = _TOP_KEY.fullmatch(key)
        if not match:
            return None
        module, param = match.groups()
        rule = _TOP_MODULES.get(module)
        prefix = None
    if rule is None or param not in rule[1]:
        return None
    layer_path, params = rule
    variable, transform = params[param]
    path = f"{layer_path}/{variable}" if prefix is None else f"{prefix}/{layer_path}/{variable}"
    return path, transform


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did: `mapped` (checkpoint key -> Keras path) and `skipped` (key -> why)."""

    mapped: dict
    skipped: dict

    def summary(self):
        return (
            f"{len(self.mapped)} tensors mapped, {len(self.skipped)} skipped on purpose"
            + (
                " (" + ", ".join(sorted(set(self.skipped.values()))) + ")"
                if self.skipped
                else ""
            )
        )


def convertible_variables(model):
    """The model's variables a checkpoint must fill, by path (all but the fixed preprocessing)."""
    return {
        variable.path: variable
        for variable in model.weights
        if not variable.path.startswith(PREPROCESSING_LAYER + "/")
    }


def plan_conversion(model, state_dict):
    """Checks a state dict against a model without touching it.

    Returns `(assignments, report)` where assignments maps Keras paths to
    converted arrays; raises `CheckpointMismatchError` listing every problem.
    """
    variables = convertible_variables(model)
    has_head = any(path.startswith("predictions/") for path in variables)
    assignments, mapped, skipped = {}, {}, {}
    unexpected, mismatched = [], []
    for key in sorted(state_dict):
        if _UNUSED.fullmatch(key):
            skipped[key] = "unused proj_norm"
            continue
        if key.startswith(HEAD_PREFIX) and not has_head:
            skipped[key] = "model has no classification head"
            continue
        target = keras_target(key)
        if target is None or target[0] not in variables:
            unexpected.append(key)
            continue
        path, transform = target
        source = np.asarray(state_dict[key])
        expected = tuple(variables[path].shape)
        try:
            value = transform(source)
        except ValueError:
            value = None
        if value is None or tuple(value.shape) != expected:
            mismatched.append((key, path, source.shape, expected))
            continue
        assignments[path] = value
        mapped[key] = path
    missing = sorted(
        set(variables) - set(assignments) - {path for _, path, _, _ in mismatched}
    )
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched)
    return assignments, ConversionReport(mapped, skipped)


def convert_state_dict(model, state_dict):
    """Loads a PyTorch HAT-Net state dict (arrays by key) into `model`, all or nothing.

    Example:

    ```python
    report = convert_state_dict(model, read_state_dict("HAT-Net_Tiny.pth"))
    print(report.summary())
    ```
    """
    assignments, report = plan_conversion(model, state_dict)
    variables = convertible_variables(model)
    for path, value in assignments.items():
        variables[path].assign(value.astype(variables[path].dtype))
    return report


def read_state_dict(path):
    """Reads a `.pth` checkpoint safely into `{key: float32 numpy array}`.

    Uses `torch.load(..., weights_only=True)`, which refuses pickled code.
    Accepts a plain state dict, one wrapped as `{"model": ...}` or
    `{"state_dict": ...}`, and keys carrying DistributedDataParallel's
    `module.` prefix.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading a .pth checkpoint needs PyTorch: pip install 'hatnet-keras[torch]'."
        ) from error
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Could not read {path} as a PyTorch checkpoint: {error}") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    state_dict = {}
    for key, tensor in checkpoint.items():
        if not hasattr(tensor, "detach"):
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        state_dict[name] = tensor.detach().to(torch.float32).numpy()
    return state_dict
