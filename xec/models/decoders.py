"""Per-face prediction heads shared by the MAE decoders and the inpainter heads.

Both map encoder feature maps (+ the face's fused token, + optionally the raw face input) back
to (npho, time) per face cell; ``FaceDecoder`` concatenates the faces in the layout's cell
order and ``FacesToFlat`` brings them back to the flat (B, 4760, 2) sensor order.

* ``RectHead``: 1x1 projection + token broadcast -> ConvNeXt V2 blocks -> LayerNorm -> a linear
  map to stride_h * stride_w * C outputs per position, rearranged to full resolution. That last
  step IS a transposed convolution with kernel == stride (written as Linear + pixel shuffle,
  which exports to ONNX as MatMul + Reshape/Transpose).
* ``HexHead``: linear projection + token broadcast -> one hex depthwise graph convolution
  (residual) -> HexNeXt blocks -> LayerNorm -> linear.

Heads never apply FCMAE masks: their job is to fill the hidden positions.
"""

from __future__ import annotations

import torch
from torch import nn

from xec.models.blocks import ConvNeXtV2Block, HexDepthwiseConv, HexNeXtBlock
from xec.models.faces import FacesToFlat


def unshuffle_cells(cells: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """(B, C, Hp, Wp) face input -> (B, Hp/sh, Wp/sw, sh*sw*C): each stem cell's raw sensors."""
    b, c, hp, wp = cells.shape
    sh, sw = stride
    x = cells.permute(0, 2, 3, 1).reshape(b, hp // sh, sh, wp // sw, sw, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp // sh, wp // sw, sh * sw * c)


class RectHead(nn.Module):
    def __init__(
        self,
        in_ch: int,
        token_dim: int,
        dim: int,
        depth: int,
        stride: tuple[int, int],
        out_ch: int = 2,
        skip_ch: int = 0,
        kernel_size: int = 7,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.stride = stride
        self.out_ch = out_ch
        self.proj = nn.Linear(in_ch, dim)
        self.skip = nn.Linear(skip_ch, dim) if skip_ch else None
        self.token = nn.Linear(token_dim, dim)
        self.blocks = nn.ModuleList(ConvNeXtV2Block(dim, kernel_size, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, stride[0] * stride[1] * out_ch)

    def forward(self, feat: torch.Tensor, token: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """feat (B, C, h, w), token (B, D), skip (B, h, w, S) -> (B, h*w*sh*sw, out_ch) in
        patch order (h, w, sh, sw)."""
        y = self.proj(feat.permute(0, 2, 3, 1)) + self.token(token)[:, None, None, :]
        if self.skip is not None and skip is not None:
            y = y + self.skip(skip)
        if len(self.blocks):
            y = y.permute(0, 3, 1, 2)
            for blk in self.blocks:
                y = blk(y)
            y = y.permute(0, 2, 3, 1)
        y = self.out(self.norm(y))  # (B, h, w, sh*sw*out)
        # Left in patch order (h, w, sh, sw): FacesToFlat's gather indices absorb the pixel
        # shuffle (see faces.patch_order), which saves a full-resolution copy.
        b, h, w, _ = y.shape
        return y.reshape(b, h * w * self.stride[0] * self.stride[1], self.out_ch)


class HexHead(nn.Module):
    def __init__(
        self,
        in_ch: int,
        token_dim: int,
        dim: int,
        depth: int,
        neighbors,
        n_faces: int,
        out_ch: int = 2,
        skip_ch: int = 0,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.n_faces = n_faces
        self.proj = nn.Linear(in_ch, dim)
        self.skip = nn.Linear(skip_ch, dim) if skip_ch else None
        self.token = nn.Linear(token_dim, dim)
        # Always one graph convolution: hidden nodes are zero in the encoder's node features,
        # so without a neighbour aggregation their prediction could only come from the token.
        self.mix = HexDepthwiseConv(dim, neighbors)
        self.blocks = nn.ModuleList(HexNeXtBlock(dim, neighbors, mlp_ratio, segments=n_faces) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_ch)

    def forward(self, nodes: torch.Tensor, tokens: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """nodes (B, F*N, C), tokens (B, F, D), skip (B, F*N, S) -> (B, F*N, out_ch)."""
        b, fn, _ = nodes.shape
        t = self.token(tokens)  # (B, F, dim)
        t = t[:, :, None, :].expand(b, self.n_faces, fn // self.n_faces, t.shape[-1]).reshape(b, fn, -1)
        y = self.proj(nodes) + t
        if self.skip is not None and skip is not None:
            y = y + self.skip(skip)
        y = y + self.mix(y)
        for blk in self.blocks:
            y = blk(y)
        return self.out(self.norm(y))


class FaceDecoder(nn.Module):
    """One head per face; ``forward(features) -> (B, 4760, out_ch)`` in flat sensor order.

    ``level`` picks the encoder map the rectangular heads read: 2 = last stage (MAE decoders,
    stride stem*2), 1 = stage 1 (inpainter, stride stem) with the raw face input as a skip.
    """

    def __init__(self, encoder, dim: int, depth: int, level: int = 2, use_skip: bool = False, out_ch: int = 2):
        super().__init__()
        cfg = encoder.cfg
        layout = encoder.layout
        self.level = level
        self.use_skip = use_skip
        self.rect_names = [f.name for f in layout.rect]
        self.rect_faces = layout.rect
        self.face_index = {name: i for i, name in enumerate(encoder.face_names)}
        in_ch = cfg.rect_dims[1] if level == 2 else cfg.rect_dims[0]
        from xec.models.encoder import IN_CHANNELS

        self.rect = nn.ModuleDict()
        self.out_ch = out_ch
        strides = []
        for face in layout.rect:
            sh, sw = face.stem_stride
            stride = (sh * 2, sw * 2) if level == 2 else (sh, sw)
            strides.append(stride)
            skip_ch = stride[0] * stride[1] * IN_CHANNELS * face.slots if use_skip else 0
            self.rect[face.name] = RectHead(
                in_ch, cfg.token_dim, dim, depth, stride, out_ch * face.slots, skip_ch, cfg.kernel_size, cfg.mlp_ratio
            )
        self.hex_faces = encoder.n_hex_faces
        # The hex heads keep the hex stack's width and use depth - 1 HexNeXt blocks after their
        # graph convolution (their 7x gathers dominate the cost of a 146-node head).
        self.hex = HexHead(
            cfg.hex_dim,
            cfg.token_dim,
            min(dim, cfg.hex_dim),
            max(depth - 1, 0),
            layout.hex.neighbors,
            self.hex_faces,
            out_ch,
            IN_CHANNELS if use_skip else 0,
            cfg.mlp_ratio,
        )
        self.to_flat = FacesToFlat(layout, "mean", strides)

    def forward(self, feats: dict) -> torch.Tensor:
        tokens = feats["tokens"]
        outs = []
        for face in self.rect_faces:
            f1, f2, _, _ = feats["rect"][face.name]
            feat = f2 if self.level == 2 else f1
            skip = None
            if self.use_skip:
                b, _, c = feats["cells"].shape
                hp, wp = face.shape
                raw = feats["cells"][:, face.offset : face.offset + face.size].reshape(b, hp, wp, face.slots * c)
                skip = unshuffle_cells(raw.permute(0, 3, 1, 2), face.stem_stride)
            y = self.rect[face.name](feat, tokens[:, self.face_index[face.name]], skip)  # (B, Hp*Wp, K*out)
            outs.append(y.reshape(y.shape[0], -1, self.out_ch))
        nodes, _ = feats["hex"]
        n_rect = len(self.rect_faces)
        skip = feats["cells"][:, self.rect_faces[-1].offset + self.rect_faces[-1].size :] if self.use_skip else None
        outs.append(self.hex(nodes, tokens[:, n_rect : n_rect + self.hex_faces], skip))
        return self.to_flat(torch.cat(outs, dim=1))
