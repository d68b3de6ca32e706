"""Building blocks of the XEC models: GRN, channels-last LayerNorm, DropPath, ConvNeXt V2
blocks for rectangular faces and HexNeXt blocks (depthwise graph convolution) for the
hexagonal PMT faces.

Masks follow the FCMAE convention: ``keep`` is a float tensor that is 1 at visible positions
and 0 at masked ones, broadcastable to the features (``(B, H, W, 1)`` / ``(B, 1, H, W)`` for
rectangular maps, ``(B, N, 1)`` for graphs). A masked block zeroes masked positions right
after its spatial operation and again on the output (residual included), so a masked position
stays exactly zero through the whole stack and never feeds its neighbours: the dense
equivalent of the sparse convolutions of ConvNeXt V2's FCMAE.

Everything here is plain tensor algebra (no Python loops over sensors, edges or batch items),
so it exports to ONNX (opset 17) and traces under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def fill_sensors(x: torch.Tensor, where: torch.Tensor, value: float | Sequence[torch.Tensor]) -> torch.Tensor:
    """``x`` (B, S, C) with the sensors where ``where`` (B, S) is true set to ``value``: a float,
    or one (B, S) tensor per channel. Channel by channel: the same numbers as ``torch.where``
    with a (B, S, 1) mask, but that broadcast over a last axis of 2 runs ~10x slower in ONNX
    Runtime (176 vs 19 us/event at batch 128, one thread): it was a fifth of the inpainter graph."""
    values = [value] * x.shape[-1] if isinstance(value, (int, float)) else list(value)
    return torch.stack([torch.where(where, v, x[..., c]) for c, v in enumerate(values)], dim=-1)


def float32_region(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that turns autocast off for ``x``'s device when it is on (bf16 training and
    validation on a GPU), and does nothing otherwise (float32 runs and exported graphs are
    unchanged). For the parts whose numbers are measurements, not features: bf16 keeps 8 bits,
    so an output layer rounds a position to ~0.4 % of its spread (mm) and the light paths
    |x_i - c|^2 = |x_i|^2 + |c|^2 - 2 c.x_i cancel to centimetres (docs/performance.md, "bf16
    autocast and the measurements"). Tensors coming in may be bf16: cast them with
    :func:`at_least_float32`."""
    device = x.device.type
    if device not in ("cpu", "cuda"):  # no autocast there (meta: xec model-info's FLOP count)
        return contextlib.nullcontext()
    try:
        on = torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4: no device argument
        on = torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()
    return torch.autocast(device, enabled=False) if on else contextlib.nullcontext()


def at_least_float32(t: torch.Tensor | None) -> torch.Tensor | None:
    """bf16 / fp16 -> float32; float32 and float64 (the export's float64 reference) as they are."""
    if t is None or not t.is_floating_point() or t.dtype in (torch.float32, torch.float64):
        return t
    return t.float()


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) for channels-last features.

    Works for ``(B, H, W, C)`` (norm over H, W) and ``(B, N, C)`` (norm over N). ``segments``
    splits the N axis of a graph into equal contiguous parts that are normalized separately
    (top and bottom hex faces processed as one node list).
    """

    def __init__(self, dim: int, eps: float = 1e-6, segments: int = 1):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.segments = segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sqrt(sum x^2 + tiny) instead of linalg.vector_norm: the strided norm kernel is much
        # slower on CPU here, and the tiny term keeps the gradient finite at an all-zero map.
        if x.dim() == 4:
            dims: tuple[int, ...] = (1, 2)
            xs = x
        elif x.dim() == 3:
            b, n, c = x.shape
            xs = x.reshape(b, self.segments, n // self.segments, c)
            dims = (2,)
        else:
            raise ValueError(f"GRN expects (B,H,W,C) or (B,N,C), got shape {tuple(x.shape)}")
        gx = torch.sqrt((xs * xs).sum(dim=dims, keepdim=True) + 1e-12)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        # gamma * (x * nx) + beta + x == beta + x * (gamma * nx + 1): one pass over the big map.
        return torch.addcmul(self.beta, xs, self.gamma * nx + 1.0).reshape(x.shape)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (``channels_first``); for
    channels-last tensors use ``nn.LayerNorm`` directly."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or with p == 0)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvNeXtV2Block(nn.Module):
    """depthwise kxk conv -> LN -> Linear(4C) -> GELU -> GRN -> Linear(C) (+ residual).

    Input/output ``(B, C, H, W)`` (keep it in ``channels_last`` memory format: the permutes are
    then free). ``keep`` ``(B, 1, H, W)`` float (1 = visible) turns on FCMAE masking.
    """

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dwconv(x)
        if keep is not None:
            y = y * keep
        y = y.permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y))))).permute(0, 3, 1, 2)
        y = self.drop_path(y)
        if keep is None:
            return x + y
        # x is already zero at masked positions (input zeroed by the caller / previous block),
        # so (x + y) * keep == x + y * keep.
        return torch.addcmul(x, y, keep)


def _padded_neighbors(neighbors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, K) neighbour table with -1 = missing -> int64 table where missing points at row N
    (a zero row appended to the features)."""
    if isinstance(neighbors, torch.Tensor):
        neighbors = neighbors.detach().cpu().numpy()
    nb = np.asarray(neighbors, dtype=np.int64)
    if nb.ndim != 2:
        raise ValueError(f"neighbour table must be (N, K), got shape {nb.shape}")
    n = nb.shape[0]
    if nb.max() >= n or nb.min() < -1:
        raise ValueError("neighbour table has indices outside [-1, N)")
    return torch.as_tensor(np.where(nb < 0, n, nb))


class HexDepthwiseConv(nn.Module):
    """Depthwise graph convolution on a hexagonal lattice.

    out[b, i, c] = sum_d w[d, c] * x[b, nbr[i, d], c] + bias[c], with column d of the
    neighbour table the direction class d (0 = self, 1..6 = the six physical directions) and
    missing neighbours (-1) reading a zero row. One fixed index gather, no scatter, no loops.
    """

    def __init__(self, dim: int, neighbors: np.ndarray | torch.Tensor, bias: bool = True):
        super().__init__()
        nb = _padded_neighbors(neighbors)
        self.num_nodes, self.num_dirs = nb.shape
        self.register_buffer("nbr", nb.reshape(-1), persistent=False)
        self.weight = nn.Parameter(torch.empty(self.num_dirs, dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        # Like a depthwise conv's default init: fan_in = number of taps.
        nn.init.uniform_(self.weight, -1.0 / self.num_dirs**0.5, 1.0 / self.num_dirs**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        xp = torch.cat([x, x.new_zeros(b, 1, c)], dim=1)
        g = xp.index_select(1, self.nbr).reshape(b, n, self.num_dirs, c)
        out = (g * self.weight).sum(dim=2)
        if self.bias is not None:
            out = out + self.bias
        return out


class HexNeXtBlock(nn.Module):
    """ConvNeXt V2 block with the depthwise conv replaced by HexDepthwiseConv.

    Input/output ``(B, N, C)``; ``keep`` ``(B, N, 1)`` float turns on FCMAE masking.
    """

    def __init__(
        self,
        dim: int,
        neighbors: np.ndarray | torch.Tensor,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        segments: int = 1,
    ):
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.dwconv = HexDepthwiseConv(dim, neighbors)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden, segments=segments)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        y = self.dwconv(x)
        if keep is not None:
            y = y * keep
        y = self.drop_path(self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y))))))
        if keep is None:
            return x + y
        return torch.addcmul(x, y, keep)  # x is zero at masked nodes already


class Attention(nn.Module):
    """Multi-head self-attention written out (no fused fast path), so that ONNX export and
    torch.compile see plain matmuls. Sequences here are a handful of face tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    """Pre-norm Transformer encoder layer: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
