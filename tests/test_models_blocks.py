"""Unit tests of xec.models.blocks: GRN, DropPath, masked ConvNeXt V2 / HexNeXt blocks and the
hexagonal depthwise convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.models.blocks import GRN, ConvNeXtV2Block, DropPath, HexDepthwiseConv, HexNeXtBlock, TransformerLayer


def hex_patch(radius: int = 3, pitch: float = 6.2):
    """A hexagonal patch of a triangular lattice: xy (N, 2) and a (N, 7) neighbour table built
    from physical distances, direction class = sector of the offset angle (independent of the
    geometry module, so the test checks the convolution alone)."""
    pts = []
    for q in range(-radius, radius + 1):
        for r in range(-radius, radius + 1):
            if abs(q + r) <= radius:
                pts.append((pitch * (q + 0.5 * r), pitch * (np.sqrt(3) / 2) * r))
    xy = np.array(pts)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    nb = -np.ones((len(xy), 7), dtype=np.int64)
    nb[:, 0] = np.arange(len(xy))
    for i in range(len(xy)):
        for j in np.nonzero((d[i] > 0.1) & (d[i] < 1.2 * pitch))[0]:
            off = xy[j] - xy[i]
            cls = int(np.round(np.degrees(np.arctan2(off[1], off[0])) / 60.0)) % 6 + 1
            nb[i, cls] = j
    return xy, nb


def test_grn_matches_reference_formula():
    torch.manual_seed(0)
    grn = GRN(8)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(3, 5, 4, 8)
    gx = torch.sqrt((x**2).sum(dim=(1, 2), keepdim=True))
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), grn.gamma * (x * nx) + grn.beta + x)
    # graph layout: norm over nodes
    xg = x.reshape(3, 20, 8)
    gx = torch.sqrt((xg**2).sum(dim=1, keepdim=True))
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(xg), grn.gamma * (xg * nx) + grn.beta + xg)


def test_grn_segments_normalize_each_part_separately():
    torch.manual_seed(0)
    grn = GRN(4, segments=2)
    with torch.no_grad():
        grn.gamma.fill_(1.0)
    a, b = torch.randn(2, 6, 4), 100 * torch.randn(2, 6, 4)
    out = grn(torch.cat([a, b], dim=1))
    single = GRN(4)
    with torch.no_grad():
        single.gamma.fill_(1.0)
    torch.testing.assert_close(out[:, :6], single(a))
    torch.testing.assert_close(out[:, 6:], single(b))


def test_grn_gradient_finite_on_all_zero_input():
    grn = GRN(4)
    x = torch.zeros(2, 3, 3, 4, requires_grad=True)
    grn(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_drop_path_identity_in_eval_and_unbiased_in_train():
    dp = DropPath(0.5)
    x = torch.ones(20000, 3)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    rows = y[:, 0]
    assert set(torch.unique(rows).tolist()) == {0.0, 2.0}
    assert abs(rows.mean().item() - 1.0) < 0.03
    assert torch.equal(y[:, 0], y[:, 1])  # one decision per sample


def test_convnext_block_masked_positions_stay_zero_and_do_not_leak():
    torch.manual_seed(0)
    blk = ConvNeXtV2Block(8, kernel_size=7).eval()
    with torch.no_grad():
        blk.grn.gamma.normal_()
    keep = (torch.rand(2, 1, 12, 10) > 0.5).float()
    x = torch.randn(2, 8, 12, 10) * keep
    out = blk(x, keep)
    assert out.shape == x.shape
    assert torch.all(out[keep.expand_as(out) == 0] == 0)
    # Changing values at masked positions (zeroed by the caller, FCMAE stem style) changes nothing.
    x2 = x + torch.randn_like(x) * (1 - keep)
    torch.testing.assert_close(blk(x2 * keep, keep), out, rtol=0, atol=0)
    # Without a mask the block is a residual map of the same shape and does see everything.
    assert not torch.allclose(blk(x2), blk(x))


def test_hex_depthwise_conv_delta_reaches_exactly_physical_neighbours():
    xy, nb = hex_patch()
    n = len(xy)
    conv = HexDepthwiseConv(3, nb)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.5)  # no accidental zero weight
        conv.bias.zero_()
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    for j in [0, n // 2, n - 1, 5]:
        x = torch.zeros(1, n, 3)
        x[0, j] = 1.0
        out = conv(x)[0]
        reached = set(torch.nonzero(out.abs().sum(-1) > 0).flatten().tolist())
        expected = set(np.nonzero(dist[j] < 1.2 * 6.2)[0].tolist())  # self + physical neighbours
        assert reached == expected
        # node i receives the delta through the direction class d with nb[i, d] == j
        for i in reached:
            d = int(np.nonzero(nb[i] == j)[0][0])
            torch.testing.assert_close(out[i], conv.weight[d].detach())


def test_hex_depthwise_conv_matches_explicit_sum():
    xy, nb = hex_patch(2)
    conv = HexDepthwiseConv(4, nb)
    x = torch.randn(2, len(xy), 4)
    ref = torch.zeros_like(x) + conv.bias
    for i in range(len(xy)):
        for d in range(7):
            if nb[i, d] >= 0:
                ref[:, i] += conv.weight[d] * x[:, nb[i, d]]
    torch.testing.assert_close(conv(x), ref)


def test_hex_depthwise_conv_rejects_bad_table():
    with pytest.raises(ValueError):
        HexDepthwiseConv(2, np.array([[0, 5], [1, 0]]))


def test_hexnext_block_mask_and_gradients():
    torch.manual_seed(0)
    xy, nb = hex_patch()
    blk = HexNeXtBlock(6, nb)
    keep = (torch.rand(2, len(xy), 1) > 0.4).float()
    x = torch.randn(2, len(xy), 6) * keep
    x.requires_grad_(True)
    out = blk(x, keep)
    assert torch.all(out[keep.expand_as(out) == 0] == 0)
    out.square().sum().backward()
    assert all(p.grad is not None for p in blk.parameters())
    x2 = (x.detach() + torch.randn_like(x) * (1 - keep)) * keep
    torch.testing.assert_close(blk(x2, keep), out.detach(), rtol=0, atol=0)


def test_transformer_layer_permutation_equivariant():
    torch.manual_seed(0)
    layer = TransformerLayer(16, 4).eval()
    x = torch.randn(2, 6, 16)
    perm = torch.tensor([3, 1, 0, 5, 2, 4])
    torch.testing.assert_close(layer(x)[:, perm], layer(x[:, perm]), rtol=1e-5, atol=1e-6)
