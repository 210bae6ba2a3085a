"""SqueezeNext (CIFAR layout) and the paper's "Modified SqueezeNext".

SqueezeNext: A. Gholami et al., "SqueezeNext: Hardware-Aware Neural Network Design", CVPRW 2018
(arXiv:1803.10615). Modified SqueezeNext: Duggal & El-Sharkawy 2020, section 2.3.

SqueezeNext block (Gholami 2018, Fig. 2; our Fig. 1 of Duggal 2020): 1x1 squeeze -> 1x1 squeeze -> 3x1 -> 1x3
-> 1x1 expand, each conv + BatchNorm + ReLU, with a ResNet-style element-wise skip (a 1x1 conv + BN projection
when the stride or the channel count changes).

The CIFAR layout follows the PyTorch CIFAR SqueezeNext that the paper's authors used as their baseline
(luuuyi/SqueezeNext.PyTorch, reused unchanged in Jayan-K-Duggal/SqueezeNext_ELU); we re-implemented it
from its description, not copied:
- stem: 3x3 conv, stride 1 (32x32 input), 3 -> 64*w channels, BN, ReLU;
- four stages with output channels 32, 64, 128, 256 (times w), stride 1, 2, 2, 2 at each stage's first block
  (spatial 32 -> 32 -> 16 -> 8 -> 4);
- squeeze ratios of a block with input channels C: first squeeze C (stride-2 block, the squeeze conv carries
  the stride), C/4 (block that reduces channels, i.e. the first block of stage 1: 64w -> 32w) or C/2
  (otherwise); second squeeze half of the first; 3x1 and 1x3 convs keep the first squeeze's width;
  the 1x1 expand goes to the block's output channels;
- head: 1x1 conv 256*w -> 128*w + BN + ReLU, global average pooling, fully connected 128*w -> classes;
- all convs carry a bias (as in the reference; BN follows, so the bias is redundant but counts in the
  checkpoint size the paper reports).
With this layout SqueezeNext-23-1x (6-6-8-1) and -2x have float32 state_dicts of 2.59 MB and 9.53 MB
(1 MB = 1e6 bytes), matching the paper's Table 1 (2.586 / 9.525 MB) within 0.2 %; with 2**20 bytes per MB
they would be 4.6 % smaller, so the paper's MB is 1e6 bytes.

Width rounding: a channel count c * w is rounded half up and clamped to >= 1 (``scale_channels``); the squeeze
ratios are applied to the already-scaled integer counts with floor division, again clamped to >= 1. At w = 1
and 2 this is exactly the reference's ``int(c * w)``.

Modified SqueezeNext (section 2.3; Figures 2-3 are not in our text, this is our reading):
- basic block (Fig. 2 right): conv + regular BatchNorm + ReLU(inplace), "excluding the scaling layer": Caffe's
  SqueezeNext has a separate Scale layer after BatchNorm; PyTorch's affine BatchNorm2d already holds that
  scale/shift, so no extra layer exists (and nothing is added);
- first block of each stage (Fig. 3 right): one 1x1 basic block from the stage's input to its output channels,
  then max pooling (3x3, padding 1, stride 2 at stages 2-4, stride 1 at stage 1) - the pooling does the
  downsampling instead of a strided conv, and no projection shortcut exists;
- other blocks (Fig. 3 left): the SqueezeNext bottleneck built of those basic blocks (1x1, 1x1, 3x1, 1x3, 1x1)
  with an identity skip;
- stem and head as in SqueezeNext.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

#: Output channels of the four stages at width 1 (Gholami 2018, CIFAR layout).
STAGE_CHANNELS: tuple[int, int, int, int] = (32, 64, 128, 256)
#: Stride of the first block of each stage (32x32 input -> 32, 16, 8, 4).
STAGE_STRIDES: tuple[int, int, int, int] = (1, 2, 2, 2)
STEM_CHANNELS = 64
HEAD_CHANNELS = 128


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded half up, at least 1 (so 0.125x of 4 channels is still one channel)."""
    return max(1, int(channels * width + 0.5))


def make_activation(name: str) -> nn.Module:
    """In-place activation by name (the paper uses ELU(inplace) and ReLU(inplace), section 2.4)."""
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"activation must be one of elu, relu, got {name!r}")


@dataclass(frozen=True)
class BlockPlan:
    """One bottleneck: input/output channels, stride, and the two squeeze widths."""

    in_ch: int
    out_ch: int
    stride: int
    squeeze1: int
    squeeze2: int
    stage: int  # 0..3
    first_in_stage: bool


@dataclass(frozen=True)
class NetPlan:
    stem_ch: int
    blocks: tuple[BlockPlan, ...]
    head_ch: int

    @property
    def last_ch(self) -> int:
        return self.blocks[-1].out_ch


def squeeze_widths(in_ch: int, out_ch: int, stride: int) -> tuple[int, int]:
    """The reference's squeeze ratios: C (stride 2), C/4 (channel-reducing block) or C/2; then half."""
    if stride == 2:
        s1 = in_ch
    elif in_ch > out_ch:
        s1 = in_ch // 4
    else:
        s1 = in_ch // 2
    s1 = max(1, s1)
    return s1, max(1, s1 // 2)


def net_plan(stage_depths: tuple[int, int, int, int], width: float) -> NetPlan:
    """Generate the channel/stride plan of the four-stage SqueezeNext skeleton from block counts and width."""
    stem = scale_channels(STEM_CHANNELS, width)
    blocks: list[BlockPlan] = []
    in_ch = stem
    for stage, (n, base, stride) in enumerate(zip(stage_depths, STAGE_CHANNELS, STAGE_STRIDES, strict=True)):
        out_ch = scale_channels(base, width)
        for i in range(n):
            s = stride if i == 0 else 1
            s1, s2 = squeeze_widths(in_ch, out_ch, s)
            blocks.append(BlockPlan(in_ch, out_ch, s, s1, s2, stage, i == 0))
            in_ch = out_ch
    return NetPlan(stem, tuple(blocks), scale_channels(HEAD_CHANNELS, width))


ConvUnit = Callable[..., nn.Module]  # (in_ch, out_ch, kernel_size, stride=1, padding=0) -> module


class ConvBnAct(nn.Sequential):
    """conv -> BatchNorm -> activation (SqueezeNext unit; Modified SqueezeNext basic block, Fig. 2 right)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size, stride: int = 1, padding=0, activation: str = "relu"
    ) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=True),
            nn.BatchNorm2d(out_ch),
            make_activation(activation),
        )


class SqnxtBottleneck(nn.Module):
    """1x1 squeeze -> 1x1 squeeze -> 3x1 -> 1x3 -> 1x1 expand, plus skip; ``unit`` makes each conv unit.

    The squeeze conv carries the stride. A projection shortcut (1x1 conv stride s + BN, then the activation,
    as in the reference) is used when the stride or channel count changes, otherwise identity. The sum is
    activated again (not in place on a tensor autograd still needs: the add makes a fresh tensor).
    """

    def __init__(
        self,
        plan: BlockPlan,
        unit: ConvUnit,
        activation: str,
        projection_bn_first: bool = True,
        allow_projection: bool = True,
    ) -> None:
        super().__init__()
        p = plan
        self.body = nn.Sequential(
            unit(p.in_ch, p.squeeze1, 1, p.stride, 0),
            unit(p.squeeze1, p.squeeze2, 1, 1, 0),
            unit(p.squeeze2, p.squeeze1, (3, 1), 1, (1, 0)),
            unit(p.squeeze1, p.squeeze1, (1, 3), 1, (0, 1)),
            unit(p.squeeze1, p.out_ch, 1, 1, 0),
        )
        needs_projection = p.stride != 1 or p.in_ch != p.out_ch
        if needs_projection and not allow_projection:
            raise ValueError(f"block {p} changes shape but projection shortcuts are disabled")
        if needs_projection:
            # projection_bn_first: conv -> BN -> act (SqueezeNext); else conv -> act -> BN (Shallow)
            layers = [nn.Conv2d(p.in_ch, p.out_ch, 1, p.stride, 0, bias=True)]
            if projection_bn_first:
                layers += [nn.BatchNorm2d(p.out_ch), make_activation(activation)]
            else:
                layers += [make_activation(activation), nn.BatchNorm2d(p.out_ch)]
            self.shortcut: nn.Module = nn.Sequential(*layers)
        else:
            self.shortcut = nn.Identity()
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # out-of-place add: both branches' tensors may be saved for backward (BN inputs, ELU outputs)
        return self.act(self.body(x) + self.shortcut(x))


def build_stages(plan: NetPlan, block: Callable[[BlockPlan], nn.Module]) -> nn.Sequential:
    """The plan's blocks as four stages (``stages.<stage>.<block>``, the names checkpoints hold)."""
    return nn.Sequential(*[nn.Sequential(*[block(b) for b in plan.blocks if b.stage == s]) for s in range(4)])


class StagedNet(nn.Module):
    """The frame SqueezeNext and Modified SqueezeNext share: stem, four stages of ``block``s, 1x1 head conv, pool,
    dropout?, FC, all from conv + BN + activation units (``ConvBnAct``)."""

    def __init__(
        self,
        stage_depths: tuple[int, int, int, int],
        width: float = 1.0,
        num_classes: int = 10,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.plan = plan = net_plan(stage_depths, width)

        def unit(i: int, o: int, k: int, s: int = 1, pad: int = 0) -> nn.Module:
            return ConvBnAct(i, o, k, s, pad, activation)

        self.stem = unit(3, plan.stem_ch, 3, 1, 1)
        self.stages = build_stages(plan, lambda b: self.block(b, unit, activation))
        self.head = unit(plan.last_ch, plan.head_ch, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(plan.head_ch, num_classes)

    def block(self, b: BlockPlan, unit: Callable[..., nn.Module], activation: str) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


class SqueezeNext(StagedNet):
    """SqueezeNext for 32x32 inputs: stem, four stages of bottlenecks, 1x1 head conv, pool, dropout?, FC."""

    def block(self, b: BlockPlan, unit: Callable[..., nn.Module], activation: str) -> nn.Module:
        return SqnxtBottleneck(b, unit, activation)


class ModifiedFirstBlock(nn.Sequential):
    """Modified SqueezeNext first block of a stage (Fig. 3 right, our reading): 1x1 basic block, max pool."""

    def __init__(self, plan: BlockPlan, activation: str) -> None:
        super().__init__(
            ConvBnAct(plan.in_ch, plan.out_ch, 1, 1, 0, activation),
            nn.MaxPool2d(kernel_size=3, stride=plan.stride, padding=1),
        )


class ModifiedSqueezeNext(StagedNet):
    """Modified SqueezeNext (Duggal 2020, section 2.3): first block per stage = basic block + max pool,
    the remaining blocks = bottlenecks of basic blocks with identity skips."""

    def block(self, b: BlockPlan, unit: Callable[..., nn.Module], activation: str) -> nn.Module:
        if b.first_in_stage:
            return ModifiedFirstBlock(b, activation)
        return SqnxtBottleneck(b, unit, activation, allow_projection=False)  # constant shape: identity skip


#: Stage block counts of the named SqueezeNext-23 layouts (Gholami 2018, Table/Fig. 6).
SQNXT_23 = (6, 6, 8, 1)
SQNXT_23V5 = (2, 4, 14, 1)
