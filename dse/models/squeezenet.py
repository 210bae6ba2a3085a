"""SqueezeNet v1.0 and v1.1, adapted to 32x32 CIFAR images (the paper's Table 1 baselines).

F. N. Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
arXiv:1602.07360 (2016); v1.1 from the official SqueezeNet repository. Duggal & El-Sharkawy 2020, section 2.1
and Table 1 (baselines), Table 7 ("Squeezed CNN (SqueezeNet implementation)", mapped to v1.0 by the registry).

Fire module: 1x1 squeeze conv (s1x1) + ReLU, then 1x1 (e1x1) and 3x3 (e3x3) expand convs + ReLU, concatenated.
The eight fire modules keep torchvision's channel counts exactly.

Differences from torchvision's ImageNet models (224x224 input), and why:
- first conv: 3x3, stride 1, padding 1 for both versions (torchvision: v1.0 7x7 stride 2 with 96 channels,
  v1.1 3x3 stride 2 with 64 channels). A 32x32 image cannot afford a stride-2 stem followed by three
  stride-2 poolings (it would reach 1x1 before the last fire modules); the channel counts (96 / 64) stay.
- max pooling: the same three 3x3 stride-2 ceil-mode pools at torchvision's positions (v1.0 after conv1,
  fire4, fire8; v1.1 after conv1, fire3, fire5), giving 32 -> 16 -> 8 -> 4 spatial.
- classifier: dropout(0.5) -> 1x1 conv 512 -> num_classes -> ReLU -> global average pooling as in torchvision,
  but AdaptiveAvgPool2d(1) over the final 4x4 map instead of a fixed 13x13 AvgPool, and num_classes 10 / 100.
- ``activation`` may switch the ReLUs to ELU (default relu); ``dropout`` sets the classifier dropout.
Parameters at 10 classes: v1.0 729,034 (checkpoint ~2.93 MB), v1.1 727,626 (~2.92 MB); the paper's Table 1
gives 3.013 / 2.961 MB (see ``python -m dse.models --table``).
"""

from __future__ import annotations

import torch
from torch import nn

from dse.models.squeezenext import make_activation

# (in, squeeze, expand1x1, expand3x3) per fire module, in order; "M" = 3x3 stride-2 max pool.
_V1_0 = [
    "M",
    (96, 16, 64, 64),
    (128, 16, 64, 64),
    (128, 32, 128, 128),
    "M",
    (256, 32, 128, 128),
    (256, 48, 192, 192),
    (384, 48, 192, 192),
    (384, 64, 256, 256),
    "M",
    (512, 64, 256, 256),
]
_V1_1 = [
    "M",
    (64, 16, 64, 64),
    (128, 16, 64, 64),
    "M",
    (128, 32, 128, 128),
    (256, 32, 128, 128),
    "M",
    (256, 48, 192, 192),
    (384, 48, 192, 192),
    (384, 64, 256, 256),
    (512, 64, 256, 256),
]
LAYOUTS = {"1_0": (96, _V1_0), "1_1": (64, _V1_1)}


class Fire(nn.Module):
    """Fire module (Iandola 2016, Fig. 1): squeeze 1x1, then concatenated expand 1x1 and expand 3x3."""

    def __init__(self, in_ch: int, squeeze: int, e1: int, e3: int, activation: str = "relu") -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_ch, squeeze, 1), make_activation(activation))
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, e1, 1), make_activation(activation))
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, e3, 3, padding=1), make_activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet v1.0 / v1.1 for 32x32 inputs (``version`` "1_0" or "1_1")."""

    def __init__(
        self, version: str = "1_0", num_classes: int = 10, dropout: float = 0.5, activation: str = "relu"
    ) -> None:
        super().__init__()
        if version not in LAYOUTS:
            raise ValueError(f"version must be one of {', '.join(LAYOUTS)}, got {version!r}")
        stem_ch, layout = LAYOUTS[version]
        layers: list[nn.Module] = [nn.Conv2d(3, stem_ch, 3, 1, 1), make_activation(activation)]
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            else:
                layers.append(Fire(*item, activation=activation))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(512, num_classes, 1),
            make_activation(activation),
            nn.AdaptiveAvgPool2d(1),
        )
        # torchvision's init: the final conv is small-normal, the rest kaiming-uniform
        final_conv = self.classifier[1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)
