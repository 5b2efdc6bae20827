"""HAT-Net as the original PyTorch code computes it: the benchmark's baseline.

A plain-PyTorch model written from `shared/docs/hatnet-architecture.md`, in the
reference's channels-first layout and formulation (`nn.Conv2d` everywhere,
windows cut with reshape/permute, attention as `matmul` + `softmax`), with the
reference's module names, so that the reference's checkpoints load into it with
`strict=True`. It is what "the original PyTorch code" means in the benchmarks
(`scripts/benchmark.py --backends reference reference-compile`); it is not part
of the `hatnet_keras` package and uses no Keras.

Like the reference, it only accepts images whose stage maps divide by the grid
sizes (a side that is a multiple of 224 for the official variants).

Example:
    >>> model = HATNet(**VARIANTS["tiny"]).eval()
    >>> model.load_state_dict(load_checkpoint("HAT-Net_Tiny.pth"), strict=True)  # doctest: +SKIP
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

import torch
from torch import nn

_COMMON = {
    "head_dim": 64,
    "expansions": (8, 8, 4, 4),
    "grid_sizes": (8, 7, 7, 1),
    "ds_ratios": (8, 4, 2, 1),
}
# The official variants in the reference's argument names (`ds_ratios` is the pooling ratio).
VARIANTS = {
    "tiny": {**_COMMON, "dims": (48, 96, 240, 384), "depths": (2, 2, 6, 3), "head_dim": 48,
             "kernel_sizes": (3, 3, 3, 3)},
    "small": {**_COMMON, "dims": (64, 128, 320, 512), "depths": (2, 3, 8, 3),
              "kernel_sizes": (3, 3, 3, 3)},
    "medium": {**_COMMON, "dims": (64, 128, 320, 512), "depths": (3, 6, 18, 3),
               "kernel_sizes": (5, 3, 5, 3)},
    "large": {**_COMMON, "dims": (64, 128, 320, 640), "depths": (3, 8, 27, 3),
              "kernel_sizes": (3, 3, 3, 3)},
}
EPSILON = 1e-6


def group_norm(channels):
    """The reference's normalisation: GroupNorm with one group, epsilon 1e-6."""
    return nn.GroupNorm(1, channels, eps=EPSILON)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample while training."""

    def __init__(self, rate=0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Downsample(nn.Module):
    """`ds2`..`ds4`: conv 3x3 stride 2 pad 1 with bias, then GroupNorm."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = group_norm(out_channels)

    def forward(self, x):
        return self.norm(self.conv(x))


class ConvFFN(nn.Module):
    """The block's `conv`: an inverted residual (GroupNorm, 1x1 up, depthwise, 1x1 down, GroupNorm)."""

    def __init__(self, dim, expansion, kernel_size, drop_rate=0.0):
        super().__init__()
        hidden = dim * expansion
        self.conv1 = nn.Sequential(
            group_norm(dim),
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.SiLU(),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden,
                      bias=False),
            nn.SiLU(),
            nn.Dropout2d(drop_rate),
        )
        self.conv3 = nn.Sequential(
            nn.Conv2d(hidden, dim, 1, bias=False),
            group_norm(dim),
            nn.Dropout2d(drop_rate),
        )

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


class HMHSA(nn.Module):
    """The block's `attn`: H-MHSA (local window attention, then pooled global attention).

    With `grid_size > 1`, the local step attends inside G x G windows, the merge
    step average-pools by `ds_ratio`, and every position attends over the pooled
    tokens; with `grid_size == 1` it is plain global attention.
    """

    def __init__(self, dim, head_dim, grid_size, ds_ratio, drop_rate=0.0):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.grid_size = grid_size
        self.ds_ratio = ds_ratio

        self.norm = group_norm(dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_norm = group_norm(dim)  # created by the reference, never called
        self.drop = nn.Dropout2d(drop_rate)
        if grid_size > 1:
            self.grid_norm = group_norm(dim)
            self.avg_pool = nn.AvgPool2d(ds_ratio, stride=ds_ratio)
            self.ds_norm = group_norm(dim)
            self.q = nn.Conv2d(dim, dim, 1)
            self.kv = nn.Conv2d(dim, dim * 2, 1)

    def _softmax_attention(self, q, k, v):
        # (..., Nq, d) x (..., Nk, d): scores, softmax over the keys, weighted sum of values.
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return attn @ v

    def _local(self, qkv, height, width):
        batch, _, _, _ = qkv.shape
        grid, heads, head_dim = self.grid_size, self.num_heads, self.head_dim
        rows, cols = height // grid, width // grid
        # (B, [q|k|v], heads, d, rows, G, cols, G) -> (3, B, heads, windows, G*G, d)
        qkv = qkv.reshape(batch, 3, heads, head_dim, rows, grid, cols, grid)
        qkv = qkv.permute(1, 0, 2, 4, 6, 5, 7, 3)
        qkv = qkv.reshape(3, batch, heads, rows * cols, grid * grid, head_dim)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = self._softmax_attention(q, k, v)
        # windows back in place: (B, heads, rows, cols, G, G, d) -> (B, C, H, W)
        out = out.reshape(batch, heads, rows, cols, grid, grid, head_dim)
        out = out.permute(0, 1, 6, 2, 4, 3, 5)
        return out.reshape(batch, heads * head_dim, height, width)

    def _global(self, q, kv):
        # q: (B, C, H, W); kv: (B, 2C, h, w) laid out [k | v].
        batch, channels, height, width = q.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = q.reshape(batch, heads, head_dim, height * width).transpose(-2, -1)
        kv = kv.reshape(batch, 2, heads, head_dim, -1).permute(1, 0, 2, 4, 3)
        out = self._softmax_attention(q, kv[0], kv[1])
        return out.transpose(-2, -1).reshape(batch, channels, height, width)

    def forward(self, x):
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x))
        if self.grid_size > 1:
            local = self._local(qkv, height, width)
            g = self.grid_norm(x + local)
            kv = self.kv(self.ds_norm(self.avg_pool(g)))
            out = self._global(self.q(g), kv) + g
        else:
            q, kv = qkv[:, :channels], qkv[:, channels:]
            out = self._global(q, kv)
        return self.drop(self.proj(out))


class Block(nn.Module):
    """One HAT-Net block: `x + drop_path(attn(x))`, then `x + drop_path(conv(x))`."""

    def __init__(self, dim, head_dim, grid_size, ds_ratio, expansion, kernel_size,
                 drop_rate=0.0, drop_path=0.0):
        super().__init__()
        self.attn = HMHSA(dim, head_dim, grid_size, ds_ratio, drop_rate)
        self.conv = ConvFFN(dim, expansion, kernel_size, drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.conv(x))


class HATNet(nn.Module):
    """HAT-Net with the reference's constructor arguments and state-dict names.

    `forward` takes normalised images `(B, 3, H, W)` and returns logits;
    `forward_stages` returns the four stage outputs as well.
    """

    def __init__(self, dims, head_dim, expansions, grid_sizes, ds_ratios, depths, kernel_sizes,
                 num_classes=1000, drop_rate=0.0, drop_path_rate=0.0):
        super().__init__()
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            group_norm(16),
            nn.SiLU(),
            nn.Conv2d(16, dims[0], 3, stride=2, padding=1),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.blocks = nn.ModuleList()
        for stage in range(4):
            stage_rates = rates[sum(depths[:stage]):sum(depths[:stage + 1])]
            self.blocks.append(nn.ModuleList(
                Block(dims[stage], head_dim, grid_sizes[stage], ds_ratios[stage],
                      expansions[stage], kernel_sizes[stage], drop_rate, rate)
                for rate in stage_rates
            ))
        self.ds2 = Downsample(dims[0], dims[1])
        self.ds3 = Downsample(dims[1], dims[2])
        self.ds4 = Downsample(dims[2], dims[3])
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(dims[3], num_classes))

    def forward_stages(self, x):
        """Logits and the list of the four stage outputs (last block of each stage)."""
        stages = []
        x = self.patch_embed(x)
        for stage, downsample in enumerate((None, self.ds2, self.ds3, self.ds4)):
            if downsample is not None:
                x = downsample(x)
            for block in self.blocks[stage]:
                x = block(x)
            stages.append(x)
        return self.classifier(x.mean(dim=(2, 3))), stages

    def forward(self, x):
        return self.forward_stages(x)[0]


def unwrap_state_dict(checkpoint):
    """The model state dict in a checkpoint: unwraps `{"model": ...}` and strips `module.`."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def load_checkpoint(path):
    """Reads a reference checkpoint safely (`weights_only=True`) and returns its state dict."""
    return unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def build(variant=None, **config):
    """A reference HAT-Net: an official variant by name, or explicit constructor arguments."""
    if variant is not None:
        config = {**VARIANTS[variant], **config}
    return HATNet(**config)


def count_parameters(model):
    """Number of parameters, the unused `proj_norm` included (as the doc's reference totals)."""
    return sum(parameter.numel() for parameter in model.parameters())


if __name__ == "__main__":
    for name in VARIANTS:
        print(f"{name}: {count_parameters(build(name)):,} parameters")
