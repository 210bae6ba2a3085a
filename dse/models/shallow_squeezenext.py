"""Shallow SqueezeNext (Duggal & El-Sharkawy 2020, section 3; Figures 6-8 are described, not included).

- Basic block (Fig. 6): conv -> ELU(inplace) -> BatchNorm. Strategy 2 of section 3 puts BN right after the
  in-place ELU; ``activation="relu"`` swaps in ReLU(inplace) for the ablation. In-place is safe here: the
  conv's backward needs its input, not its output, and BN saves the (already activated) tensor it receives.
- Bottleneck (Fig. 8 left): 1x1, 1x1, 3x1, 1x3, 1x1 basic blocks with an element-wise skip (strategy 3); a
  projection (1x1 conv with the block's stride -> ELU -> BN) when the stride or channel count changes; the sum
  goes through the activation (out of place add, then in-place activation on the fresh sum).
- Four stages (Fig. 8 right, "1 2 8 1"): any block counts - the paper's "resolution multiplier" (section
  3.1) - and any width multiplier (section 3.2). Channels, squeeze ratios and strides are the SqueezeNext-23
  CIFAR plan (``squeezenext.net_plan``): stem 3x3 conv to 64w, stages 32w/64w/128w/256w, strides 1/2/2/2.
  Width scaling rounds half up and clamps every channel count to >= 1, so 0.125x still builds.
- Head (Fig. 7): the 1x1 "spatial resolution" conv (basic block, 256w -> 128w), dropout (p = 0.3 default,
  Table 4 sweeps 0.1-0.5), global average pooling, fully connected. Section 3's strategy list says dropout
  sits after the pooling in one sentence and before it in the next; we follow the order of section 3's
  opening paragraph and the paper README: conv, dropout, average pooling, FC.
- Total depth DD in "Shallow SqueezeNext-DD-Wx" = sum of stage blocks + 2 (stem and head convs).
No max pooling anywhere (strategy 5): downsampling is by the strided first squeeze conv of stages 2-4.
"""

from __future__ import annotations

import torch
from torch import nn

from dse.models.squeezenext import SqnxtBottleneck, build_stages, make_activation, net_plan


class BasicBlock(nn.Sequential):
    """Shallow SqueezeNext basic block (Fig. 6): conv -> activation(inplace) -> BatchNorm."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size, stride: int = 1, padding=0, activation: str = "elu"
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=True),
            make_activation(activation),
            nn.BatchNorm2d(out_ch),
        )


class ShallowSqueezeNext(nn.Module):
    """Shallow SqueezeNext for 32x32 inputs, built from four stage block counts and a width multiplier."""

    def __init__(
        self,
        stage_depths: tuple[int, int, int, int],
        width: float = 1.0,
        num_classes: int = 10,
        dropout: float = 0.3,
        activation: str = "elu",
    ) -> None:
        super().__init__()
        plan = net_plan(stage_depths, width)
        self.plan = plan

        def unit(i, o, k, s=1, pad=0):
            return BasicBlock(i, o, k, s, pad, activation)

        self.stem = unit(3, plan.stem_ch, 3, 1, 1)
        self.stages = build_stages(plan, lambda b: SqnxtBottleneck(b, unit, activation, projection_bn_first=False))
        self.spatial = unit(plan.last_ch, plan.head_ch, 1)  # the 1x1 "spatial resolution" layer
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(plan.head_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spatial(self.stages(self.stem(x)))
        x = torch.flatten(self.pool(self.dropout(x)), 1)
        return self.fc(x)
