"""Deformable convolution (DCNv1 / DCNv2) on top of ``torchvision.ops.deform_conv2d``."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import deform_conv2d


class DeformConv(nn.Module):
    """A k x k convolution whose sampling positions (and, if ``modulated``, per-sample weights)
    are predicted from its input by a plain conv, ``conv_offset``.

    DCNv1 (Dai et al. 2017) learns offsets; DCNv2 (Zhu et al. 2019, "modulated") also learns a
    mask in (0, 2) per sampling position. ``conv_offset`` starts at zero, so at initialisation
    the offsets are 0 and the mask is 2 * sigmoid(0) = 1: the layer computes exactly the plain
    convolution with the same ``weight`` and ``bias``. Deviation: DCNv2's paper and code use
    sigmoid (mask 0.5 at init), which halves the output of an ImageNet-pretrained conv that is
    swapped for it; the factor 2 keeps pretrained backbones intact at the start of training.

    Parameters are named like ``nn.Conv2d``'s (``weight``, ``bias``), so a plain conv's state
    dict (e.g. ImageNet weights) loads into it; only ``conv_offset.*`` is new.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as nn.Conv2d.
        modulated: DCNv2 (offsets + mask) if True, DCNv1 (offsets only) if False.
    Input/output: [B, in_channels, H, W] -> [B, out_channels, H', W'] (H', W' as nn.Conv2d).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, bias: bool = True,
                 modulated: bool = True):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.modulated = modulated
        self.num_taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=1)
        # (dy, dx) per tap, plus one mask logit per tap when modulated; same geometry as the conv.
        self.conv_offset = nn.Conv2d(in_channels, (3 if modulated else 2) * self.num_taps, kernel_size,
                                     stride, padding, dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, modulated: bool = True) -> "DeformConv":
        """The deformable twin of ``conv``: same geometry, a copy of its weight and bias."""
        if conv.kernel_size[0] != conv.kernel_size[1] or isinstance(conv.padding, str):
            raise ValueError(f"DeformConv needs a square kernel and numeric padding, got {conv}")
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                  conv.dilation[0], conv.groups, conv.bias is not None, modulated)
        with torch.no_grad():
            out.weight.copy_(conv.weight)
            if conv.bias is not None:
                out.bias.copy_(conv.bias)
        return out.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset_mask = self.conv_offset(x)                                   # [B, 3*k*k or 2*k*k, H', W']
        offset = offset_mask[:, :2 * self.num_taps]                         # [B, 2*k*k, H', W']
        mask = 2 * offset_mask[:, 2 * self.num_taps:].sigmoid() if self.modulated else None  # [B, k*k, H', W']
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:
        kind = "DCNv2" if self.modulated else "DCNv1"
        out_channels, in_per_group, k, _ = self.weight.shape
        return (f"{kind}, out_channels={out_channels}, in_channels_per_group={in_per_group}, k={k}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")
