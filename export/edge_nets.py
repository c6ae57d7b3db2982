"""Our own small architectures for the default model set (trained by export/train.py, BSD-3-Clause).

All three are batch-independent at inference: BatchNorm is trained with batch statistics and then folded
into the preceding convolution (`fold_batchnorm`), so the exported graphs hold only Conv/ReLU/pooling and the
manifest says bn "none". Every forward returns logits; the runtime applies the sigmoid.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EdgeUNet",
    "EdgeSquareCNN",
    "EdgeHoleCNN",
    "fold_batchnorm",
    "conv_macs",
]


class ConvBNReLU(nn.Module):
    """3x3 (or k x k) conv -> BatchNorm -> ReLU; the BN is folded away before export."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None) -> None:
        super().__init__()
        pad = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=True)
        self.bn: nn.Module = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with each ConvBNReLU's BatchNorm folded into its conv."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, ConvBNReLU) and isinstance(module.bn, nn.BatchNorm2d):
            bn = module.bn
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            conv = module.conv
            conv.weight.data = conv.weight.detach() * scale.view(-1, 1, 1, 1)
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())
            module.bn = nn.Identity()
    return model


class EdgeUNet(nn.Module):
    """A small U-Net for hole centres at a canonical lattice period (64 px).

    Encoder: per level `enc_convs` ConvBNReLU, MaxPool 2 between levels. Decoder: nearest upsampling to the
    skip's size, concat [upsampled, skip], `dec_convs` ConvBNReLU. Last: 1x1 conv to one logit channel.
    Few channels at full resolution keep it cheap (the full-resolution levels dominate the cost).
    """

    def __init__(self, widths: Sequence[int] = (8, 16, 32, 32), enc_convs: int = 2, dec_convs: int = 1,
                 stem_stride: int = 1) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.depth = len(self.widths)
        self.stem_stride = int(stem_stride)
        # A strided stem runs the whole U-Net at 1/stem_stride resolution; the logits are upsampled back
        # (bilinear) inside the graph. Hole centres come from blob centroids, which stay sub-pixel accurate.
        self.stem = ConvBNReLU(1, self.widths[0], stride=self.stem_stride) if self.stem_stride > 1 else None
        self.down = nn.ModuleList()
        cin = self.widths[0] if self.stem is not None else 1
        for w in self.widths:
            self.down.append(nn.Sequential(*[ConvBNReLU(cin if i == 0 else w, w) for i in range(enc_convs)]))
            cin = w
        self.up = nn.ModuleList()
        for level in range(self.depth - 2, -1, -1):
            w = self.widths[level]
            self.up.append(nn.Sequential(*[ConvBNReLU(cin + w if i == 0 else w, w) for i in range(dec_convs)]))
            cin = w
        self.last = nn.Conv2d(cin, 1, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (every pooling exact)."""
        return self.stem_stride * 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.size(2), x.size(3))
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=(skip.size(2), skip.size(3)), mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        x = self.last(x)
        if self.stem is not None:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class EdgeSquareCNN(nn.Module):
    """Square classifier for 1 x crop x crop inputs: `pool` x `pool` average pooling first (pool 1: none; the first
    default set took 240x240 crops pooled 2x2 inside the graph; the runtime now hands it crops already reduced,
    ptolemy_rt.crops.square_crops with the manifest's crop_scale), ConvBNReLU + MaxPool blocks, then global mean
    and max pooling concatenated into a linear layer (position-tolerant, so off-centre squares still score)."""

    def __init__(self, widths: Sequence[int] = (8, 16, 24, 32), crop: int = 240, pool: int = 2) -> None:
        super().__init__()
        self.crop = int(crop)
        self.pool = int(pool)
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(self.widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers.append(ConvBNReLU(cin, w))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, 1)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """crop x crop inputs -> crop / pool, the first op of the graph (pool 1, the default set now: none, the
        crops arrive reduced by ptolemy_rt.crops.square_crops, and training fits classify on them)."""
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for reduced crops."""
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.reduce(x))


class EdgeHoleCNN(nn.Module):
    """Hole classifier for per-crop-normalised lattice-frame crops of any size >= `min_size`.

    The graph first resizes every crop to `side` x `side` (inside the graph), so the cost is the same for a
    40 px or a 400 px crop and holes look alike whatever the lattice period. ONNX export has no antialiased
    resize, so it resizes bilinearly to 4 x side and averages 4x4 blocks: crops up to ~4 x side px keep
    (nearly) all their pixels' worth of signal instead of being point-sampled.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 48), side: int = 32, min_size: int = 16) -> None:
        super().__init__()
        self.side = int(side)
        self.min_size = int(min_size)
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(self.widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [ConvBNReLU(cin, w), ConvBNReLU(w, w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, 1)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Crops of any size -> side x side (the first op of the graph)."""
        x = F.interpolate(x, size=(4 * self.side, 4 * self.side), mode="bilinear", align_corners=False)
        return F.avg_pool2d(x, 4)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for crops already resized to side x side."""
        f = self.features(x)
        return self.head(torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.resize(x))


def conv_macs(model: nn.Module, shape: Sequence[int]) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one input of `shape` (N C H W)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(*shape))
    finally:
        for h in handles:
            h.remove()
    return total
