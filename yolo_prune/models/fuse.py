"""Re-parameterisation: Conv+BN folding, RepConv branch merging, IDetect implicit folding.

Each function mutates the given model in place and returns it; wrap with ``copy.deepcopy`` to keep the
original. Outputs are unchanged (in eval mode) up to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from yolo_prune.models.blocks import Conv, RepConv
from yolo_prune.models.heads import IDetect


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d with bias equal to ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def _identity_kernel(rep: RepConv, like: torch.Tensor) -> torch.Tensor:
    """The identity branch as a kxk kernel (1 at the centre tap of each channel's own input)."""
    out_c, in_per_group, kh, kw = like.shape
    kernel = torch.zeros_like(like)
    for c in range(out_c):
        kernel[c, c % in_per_group, kh // 2, kw // 2] = 1.0
    return kernel


@torch.no_grad()
def merge_repconv(rep: RepConv) -> None:
    """Merge dense 3x3, 1x1 and identity branches (each with its BN) into ``rbr_reparam``."""
    if rep.rbr_reparam is not None:
        return
    dense = fold_bn(rep.rbr_dense[0], rep.rbr_dense[1])
    one = fold_bn(rep.rbr_1x1[0], rep.rbr_1x1[1])
    kh, kw = dense.kernel_size
    weight = dense.weight + F.pad(one.weight, [kw // 2, kw // 2, kh // 2, kh // 2])
    bias = dense.bias + one.bias
    if rep.rbr_identity is not None:
        bn = rep.rbr_identity
        ident = nn.Conv2d(rep.in_channels, rep.out_channels, dense.kernel_size, groups=rep.groups, bias=False,
                          device=weight.device, dtype=weight.dtype)
        ident.weight.copy_(_identity_kernel(rep, ident.weight))
        folded = fold_bn(ident, bn)
        weight, bias = weight + folded.weight, bias + folded.bias
    dense.weight.copy_(weight)
    dense.bias.copy_(bias)
    rep.rbr_reparam = dense
    rep.rbr_dense = rep.rbr_1x1 = rep.rbr_identity = None


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Fold every Conv block's BatchNorm into its convolution (in place)."""
    for m in model.modules():
        if isinstance(m, Conv) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fold_bn(m.conv, m.bn)
            m.bn = nn.Identity()
    return model


@torch.no_grad()
def fuse_repconv(model: nn.Module) -> nn.Module:
    """Merge every RepConv's branches into one convolution (in place)."""
    for m in model.modules():
        if isinstance(m, RepConv):
            merge_repconv(m)
    return model


@torch.no_grad()
def fold_implicit(model: nn.Module) -> nn.Module:
    """Fold IDetect's ImplicitA/ImplicitM into the head convolutions (in place), as official ``IDetect.fuse``."""
    for head in model.modules():
        if not isinstance(head, IDetect) or len(head.ia) == 0:
            continue
        for conv, ia, im in zip(head.m, head.ia, head.im):
            w = conv.weight.view(conv.out_channels, -1)  # 1x1 conv: [out, in]
            conv.bias += (w @ ia.implicit.view(-1, 1)).view(-1)
            conv.bias *= im.implicit.view(-1)
            conv.weight *= im.implicit.view(-1, 1, 1, 1)
        head.ia = nn.ModuleList()
        head.im = nn.ModuleList()
    return model


def fuse(model: nn.Module, conv_bn: bool = True, repconv: bool = True, implicit: bool = False) -> nn.Module:
    """Apply the chosen re-parameterisations in place; the published figures use conv_bn + repconv."""
    if repconv:
        fuse_repconv(model)
    if conv_bn:
        fuse_conv_bn(model)
    if implicit:
        fold_implicit(model)
    return model


def deployable_copy(model: nn.Module, device: torch.device | str = "cpu", fp16: bool = False) -> nn.Module:
    """What runs in deployment: a copy with every re-parameterisation (BN, RepConv, implicit) and without the
    training-only auxiliary heads of P6 models, eval mode, no gradients, on ``device``, half precision if asked;
    ``model`` itself is untouched (exporters, benchmarks)."""
    import copy

    from yolo_prune.models.aux import drop_aux_heads, has_aux_heads

    prepared = drop_aux_heads(model) if has_aux_heads(model) else copy.deepcopy(model)
    prepared = fuse(prepared.float().eval(), conv_bn=True, repconv=True, implicit=True)
    prepared.requires_grad_(False)
    prepared.to(device)
    return prepared.half() if fp16 else prepared
