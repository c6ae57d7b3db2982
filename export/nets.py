"""PyTorch modules for the three Ptolemy architectures, parameterised so our own variants reuse them.

With the default arguments each module's state_dict keys and shapes are those of the published checkpoints
(load them with strict=True). Every forward returns logits; the sigmoid belongs to the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BNMode = Literal["batch", "running", "none"]
BN_MODES: tuple[str, ...] = ("batch", "running", "none")


class BatchStatNorm2d(nn.Module):
    """BatchNorm2d that always normalises with the statistics of the batch it is given.

    torch's BatchNorm2d in train mode exports to ONNX BatchNormalization(training_mode=1), which the
    onnxruntime inference build rejects; spelling the statistics out as mean reductions exports to
    ReduceMean/Sub/Mul/Sqrt that every runtime accepts. It reproduces the original tool, which never
    called eval(). The running-statistics buffers exist only so BatchNorm2d state_dicts load with
    strict=True; they are neither read nor updated.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise per channel over (N, H, W) with the biased variance, as BatchNorm2d in train mode."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return centred * scale + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(bn: str, channels: int) -> nn.Module:
    """Normalisation layer for a BN mode: batch statistics, running statistics (eval mode) or none."""
    if bn == "batch":
        return BatchStatNorm2d(channels)
    if bn == "running":
        # Plain BatchNorm2d so our own variants can train it; it uses the running statistics after eval().
        return nn.BatchNorm2d(channels)
    if bn == "none":
        return nn.Identity()
    raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")


def _conv_pool_size(size: int, kernel: int, pool_padding: int) -> int:
    """Side after a valid conv of this kernel and MaxPool(3, stride 2, padding); < 1 when it does not fit."""
    size = size - kernel + 1
    if size + 2 * pool_padding < 3:
        return 0
    return (size + 2 * pool_padding - 3) // 2 + 1


class SquareCNN(nn.Module):
    """Square classifier: [conv (valid, no bias) -> ReLU -> BN -> MaxPool(3, 2, pad 1)] x len(kernels), then a conv
    over the whole remaining map to one logit. Input [N, 1, crop, crop], output [N, 1]."""

    def __init__(
        self,
        channels: int = 64,
        kernels: Sequence[int] = (5, 5, 3, 3, 3),
        crop: int = 240,
        bn: BNMode = "batch",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.kernels = tuple(int(k) for k in kernels)
        self.crop = int(crop)
        self.bn_mode = bn
        size = self.crop
        cin = in_channels
        for i, k in enumerate(self.kernels, 1):
            # Without BN a conv bias is the only offset; with BN it would be absorbed (the published has none).
            setattr(self, f"layer{i}", nn.Conv2d(cin, channels, k, bias=bn == "none"))
            setattr(self, f"bn{i}", make_norm(bn, channels))
            size = _conv_pool_size(size, k, 1)
            if size < 1:
                raise ValueError(f"crop {crop} is too small for kernels {self.kernels}")
            cin = channels
        self.feature_size = size
        self.pooling = nn.MaxPool2d(3, 2, padding=1)
        self.linear = nn.Conv2d(channels, 1, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1] for crops [N, 1, crop, crop]."""
        for i in range(1, len(self.kernels) + 1):
            conv = getattr(self, f"layer{i}")
            norm = getattr(self, f"bn{i}")
            x = self.pooling(norm(F.relu(conv(x))))
        return self.linear(x).flatten(1)


def hole_cnn_min_size(blocks: int = 4, first_kernel: int = 5, kernel: int = 3) -> int:
    """Smallest square crop side the HoleCNN accepts (63 for the published 4-block net)."""
    side = 1
    while True:
        size = side
        for b in range(blocks):
            size = _conv_pool_size(size, first_kernel if b == 0 else kernel, 0)
            if size < 1:
                break
        if size >= 1:
            return side
        side += 1


class HoleCNN(nn.Module):
    """Hole classifier: [conv (valid, no bias) -> BN -> ReLU -> MaxPool(3, 2)] x blocks, mean over space, linear.
    Input [N, 1, H, W] with H, W >= min_size, output [N, 1]."""

    def __init__(
        self,
        channels: int = 128,
        blocks: int = 4,
        first_kernel: int = 5,
        kernel: int = 3,
        bn: BNMode = "batch",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.bn_mode = bn
        self.min_size = hole_cnn_min_size(blocks, first_kernel, kernel)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        cin = in_channels
        for b in range(blocks):
            k = first_kernel if b == 0 else kernel
            self.convs.append(nn.Conv2d(cin, channels, k, bias=bn == "none"))
            self.bns.append(make_norm(bn, channels))
            cin = channels
        self.pooling = nn.MaxPool2d(3, 2, padding=0)
        self.final = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1] for crops [N, 1, H, W]."""
        for conv, norm in zip(self.convs, self.bns):
            x = self.pooling(F.relu(norm(conv(x))))
        return self.final(x.mean(dim=(2, 3)))


class ConvBlock(nn.Module):
    """One U-Net level: 3x3 conv (padding 1) + ReLU, `convs` times. The first conv is `conv` (the published key)."""

    def __init__(self, cin: int, cout: int, convs: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.extra = nn.ModuleList(nn.Conv2d(cout, cout, 3, padding=1) for _ in range(convs - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve and rectify."""
        x = F.relu(self.conv(x))
        for conv in self.extra:
            x = F.relu(conv(x))
        return x


class UNet(nn.Module):
    """Hole segmenter: `depth` levels of ConvBlocks with MaxPool 2 between them on the way down; on the way up,
    nearest upsampling to the skip's exact size, concat [upsampled, skip], ConvBlock; last 3x3 conv to one logit
    channel. Input [N, 1, H, W], output logits [N, 1, H, W]. Any H, W run; multiples of 2**(depth-1) keep
    every level's pooling exact (the published net was trained that way)."""

    def __init__(
        self,
        depth: int = 9,
        width: int | Sequence[int] = 64,
        blocks_per_level: int = 1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        widths = [int(width)] * depth if isinstance(width, int) else [int(w) for w in width]
        if len(widths) != depth or depth < 1:
            raise ValueError(f"width needs one entry per level ({depth}), got {widths}")
        self.depth = depth
        self.widths = tuple(widths)
        self.down_path = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down_path.append(ConvBlock(cin, w, blocks_per_level))
            cin = w
        self.up_path = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            self.up_path.append(ConvBlock(cin + widths[level], widths[level], blocks_per_level))
            cin = widths[level]
        self.last = nn.Conv2d(cin, 1, 3, padding=1)

    @property
    def multiple(self) -> int:
        """Input sides divisible by this pool exactly at every level."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1, H, W] for images [N, 1, H, W]."""
        skips: list[torch.Tensor] = []
        for i, down in enumerate(self.down_path):
            x = down(x)
            if i < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up in self.up_path:
            skip = skips.pop()
            # Size taken from the skip tensor, so the ONNX Resize reads it from Shape and odd sides work.
            x = F.interpolate(x, size=(skip.size(2), skip.size(3)), mode="nearest")
            x = up(torch.cat([x, skip], dim=1))
        return self.last(x)
