"""Flat sensor vector <-> detector faces, as fixed index tables (no Python loops at run time).

Every rectangular face is a grid of cells and every cell has K "slots", each holding one
sensor (K = 1 except on a pooled outer grid). ``FaceLayout`` turns the geometry's index maps
into

* one gather index ``gather_idx`` (L,) into the flat sensor axis, where index 4760 is an
  extra padding row (empty slots, padding cells): every face, padded to a multiple of its
  backbone's total stride, flattened as (rows, cols, slots) and concatenated in FACE order,
  then the top and bottom hex node lists;
* the inverse: every sensor either sits in one slot (read back directly) or in several
  (read back as the share-weighted mean, or the first one), so per-slot predictions come back
  in flat (B, 4760, C) order with two gathers and a fixed permutation.

Outer face (documented choice): the geometry's ``outer_grid(pool)`` (default pool (3, 5):
24 x 9 cells, one per coarse PMT; the 12 cells of the centre lattice hold 4 or 6 PMTs). Each
PMT's normalized values are placed in its slot of every cell it covers (intensive copy:
npho is not split by the cell shares, so no inverse normalization is needed inside the
model); the slots of a cell are ordered by covered area, then sensor id. A cell's slots are
stacked as input channels, so nothing is averaged away and faces -> flat is exact.
``outer_pool=1`` gives the exact 72 x 45 fine grid (one slot per cell, coarse PMTs copied
into 3 x 5 cells).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

N_SENSORS_DEFAULT = 4760
RECT_FACES = ("inner", "outer", "us", "ds")
HEX_FACES = ("top", "bottom")


@dataclass
class RectFace:
    name: str
    index: np.ndarray  # (Hp, Wp, K) int64 sensor id per slot, -1 = empty / padding
    height: int  # unpadded size
    width: int
    stem_stride: tuple[int, int]
    offset: int = 0  # start of this face in the concatenated slot axis

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.index.shape[0]), int(self.index.shape[1])

    @property
    def slots(self) -> int:
        return int(self.index.shape[2])

    @property
    def size(self) -> int:
        return int(self.index.size)


@dataclass
class HexFaces:
    names: tuple[str, ...]
    ids: np.ndarray  # (F*N,) sensor ids, faces concatenated
    neighbors: np.ndarray  # (F*N, 7) into the concatenated node list, -1 = none
    nodes_per_face: int
    offset: int = 0


@dataclass
class FaceLayout:
    rect: list[RectFace]
    hex: HexFaces
    n_sensors: int
    gather_idx: np.ndarray = field(init=False)  # (L,)
    direct_sensors: np.ndarray = field(init=False)  # sensor ids with exactly one cell
    direct_cells: np.ndarray = field(init=False)  # their cell
    multi_sensors: np.ndarray = field(init=False)  # sensor ids spread over several cells
    multi_cells: np.ndarray = field(init=False)  # (M, K) cells, padded with cell 0
    multi_weights: np.ndarray = field(init=False)  # (M, K) float32, rows sum to 1
    multi_first: np.ndarray = field(init=False)  # (M,) first cell of each
    inverse_perm: np.ndarray = field(init=False)  # flat order from [direct, multi]

    def __post_init__(self) -> None:
        parts, off = [], 0
        for face in self.rect:
            face.offset = off
            parts.append(face.index.reshape(-1))
            off += face.size
        self.hex.offset = off
        parts.append(self.hex.ids.reshape(-1))
        gather = np.concatenate(parts).astype(np.int64)
        self.gather_idx = np.where(gather < 0, self.n_sensors, gather)

    @property
    def num_cells(self) -> int:
        return int(self.gather_idx.size)

    def set_inverse(self, cell_weight: np.ndarray) -> None:
        """Build the faces -> flat tables from per-cell weights (1 for single-cell sensors)."""
        gather = self.gather_idx
        valid = gather < self.n_sensors
        cells = np.nonzero(valid)[0]
        sensors = gather[cells]
        counts = np.bincount(sensors, minlength=self.n_sensors)
        missing = np.nonzero(counts == 0)[0]
        if missing.size:
            raise ValueError(f"face layout misses {missing.size} sensors (e.g. id {missing[0]})")
        direct = np.nonzero(counts == 1)[0]
        multi = np.nonzero(counts > 1)[0]
        first_cell = np.full(self.n_sensors, -1, dtype=np.int64)
        order = np.argsort(sensors, kind="stable")
        s_sorted, c_sorted = sensors[order], cells[order]
        starts = np.searchsorted(s_sorted, np.arange(self.n_sensors))
        first_cell[:] = c_sorted[starts]
        self.direct_sensors = direct
        self.direct_cells = first_cell[direct]
        k = int(counts.max()) if multi.size else 1
        mc = np.zeros((multi.size, k), dtype=np.int64)
        mw = np.zeros((multi.size, k), dtype=np.float64)
        for row, sid in enumerate(multi):  # build time only
            cs = c_sorted[starts[sid] : starts[sid] + counts[sid]]
            w = cell_weight[cs].astype(np.float64)
            if not np.all(w > 0):
                w = np.ones_like(w)
            mc[row, : cs.size] = cs
            mw[row, : cs.size] = w / w.sum()
        self.multi_sensors = multi
        self.multi_cells = mc
        self.multi_weights = mw.astype(np.float32)
        self.multi_first = mc[:, 0].copy()
        perm = np.concatenate([direct, multi])
        inv = np.empty(self.n_sensors, dtype=np.int64)
        inv[perm] = np.arange(self.n_sensors)
        self.inverse_perm = inv


def _pad_index(index: np.ndarray, multiple: tuple[int, int]) -> np.ndarray:
    h, w, k = index.shape
    hp = -(-h // multiple[0]) * multiple[0]
    wp = -(-w // multiple[1]) * multiple[1]
    out = -np.ones((hp, wp, k), dtype=np.int64)
    out[:h, :w] = index
    return out


def as_pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def outer_slots(grid) -> tuple[np.ndarray, np.ndarray]:
    """RectGrid -> (H, W, K) sensor id per slot (-1 empty) and (H, W, K) npho share per slot."""
    h, w = grid.index.shape
    cell = np.asarray(grid.entry_cell, dtype=np.int64)
    sensor = np.asarray(grid.entry_sensor, dtype=np.int64)
    area = np.asarray(grid.entry_area, dtype=np.float64)
    share = np.asarray(grid.entry_share, dtype=np.float64)
    order = np.lexsort((sensor, -area, cell))  # per cell: largest area first, then id
    cell, sensor, share = cell[order], sensor[order], share[order]
    counts = np.bincount(cell, minlength=h * w)
    k = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(cell.size) - starts[cell]
    ids = -np.ones((h * w, k), dtype=np.int64)
    shares = np.zeros((h * w, k), dtype=np.float64)
    ids[cell, slot] = sensor
    shares[cell, slot] = share
    return ids.reshape(h, w, k), shares.reshape(h, w, k)


def build_face_layout(
    geometry, stem_stride, outer_stem_stride, small_stem_stride, outer_pool=(3, 5), stage_downsample: int = 2
) -> FaceLayout:
    """Face layout from a geometry object (``xec.geometry.get_geometry()`` API).

    Patchify strides (int or (rows, cols)): ``stem_stride`` for the inner face (93 x 44),
    ``outer_stem_stride`` for the outer grid ``geometry.outer_grid(outer_pool)``,
    ``small_stem_stride`` for US/DS (24 x 6). Each face is padded to a multiple of
    stem * stage_downsample.
    """
    faces: list[RectFace] = []
    weights: list[np.ndarray] = []
    outer_ids, outer_share = outer_slots(geometry.outer_grid(pool=as_pair(outer_pool)))
    one = lambda a: np.asarray(a, dtype=np.int64)[..., None]  # noqa: E731
    sources = {
        "inner": (one(geometry.inner_index), None, as_pair(stem_stride)),
        "outer": (outer_ids, outer_share, as_pair(outer_stem_stride)),
        "us": (one(geometry.us_index), None, as_pair(small_stem_stride)),
        "ds": (one(geometry.ds_index), None, as_pair(small_stem_stride)),
    }
    for name in RECT_FACES:
        index, share, (s0, s1) = sources[name]
        sh = min(s0, index.shape[0])
        sw = min(s1, index.shape[1])
        mult = (sh * stage_downsample, sw * stage_downsample)
        padded = _pad_index(index, mult)
        faces.append(RectFace(name, padded, index.shape[0], index.shape[1], (sh, sw)))
        wpad = np.zeros(padded.shape, dtype=np.float64)
        wpad[: index.shape[0], : index.shape[1]] = 1.0 if share is None else share
        weights.append(wpad.reshape(-1))
    ids, nbrs, n_per = [], [], None
    for k, name in enumerate(HEX_FACES):
        hf = geometry.hex_face(name)
        n = len(hf.ids)
        if n_per is None:
            n_per = n
        elif n != n_per:
            raise ValueError("top and bottom hex faces must have the same number of nodes")
        nb = np.asarray(hf.neighbors, dtype=np.int64)
        ids.append(np.asarray(hf.ids, dtype=np.int64))
        nbrs.append(np.where(nb < 0, -1, nb + k * n))
    hexf = HexFaces(HEX_FACES, np.concatenate(ids), np.concatenate(nbrs), int(n_per))
    weights.append(np.ones(hexf.ids.size, dtype=np.float64))
    layout = FaceLayout(faces, hexf, n_sensors=int(len(geometry.positions)))
    layout.set_inverse(np.concatenate(weights))
    return layout


def patch_order(hp: int, wp: int, k: int, stride: tuple[int, int]) -> np.ndarray:
    """Position of every (row, col, slot) of an (hp, wp, k) face in the (h, w, sh, sw, k) order
    a per-patch head emits (a transposed conv written as Linear: no pixel-shuffle copy)."""
    sh, sw = stride
    r = np.arange(hp)[:, None, None]
    c = np.arange(wp)[None, :, None]
    s = np.arange(k)[None, None, :]
    w = wp // sw
    pos = ((((r // sh) * w + c // sw) * sh + r % sh) * sw + c % sw) * k + s
    return pos.reshape(-1)


def flat_index(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """Row index (L,) into (B, N, C) -> element index (L*C,) into its (B, N*C) view."""
    return (rows[:, None] * channels + torch.arange(channels, device=rows.device)).reshape(-1)


def gather_rows(x: torch.Tensor, rows: torch.Tensor, flat: torch.Tensor | None = None) -> torch.Tensor:
    """``x[:, rows]`` for ``x`` (B, N, C): the encoder's face cells and the heads' way back to
    sensors; ``flat`` = ``flat_index(rows, C)`` when the caller keeps it. The fastest form
    depends on the runtime, the numbers do not (pure copies): eager PyTorch gathers single
    floats of the flattened rows (77 us/event forward + backward at batch 128, one thread; 147
    sensor-major), ONNX Runtime one Gather on the sensor axis (98 us/event for the encoder's
    13,156 rows at batch 128, one thread, ORT 1.32; 153 flat; 165 through a sensor-major copy and
    back, whose two Transposes were 9-15 % of the exported graphs), so traced and exported graphs
    get that form."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return x.index_select(1, rows)
    b, n, c = x.shape
    flat = flat_index(rows, c) if flat is None else flat
    return x.reshape(b, n * c).index_select(1, flat).reshape(b, -1, c)


class FacesToFlat(torch.nn.Module):
    """(B, L, C) per-slot values (concatenated faces) -> (B, n_sensors, C) in flat sensor order.

    ``reduce``: "mean" (share-weighted mean over a multi-slot sensor's slots; decoders) or
    "first" (its first slot; the exact inverse of the encoder's copy). ``strides``: per
    rectangular face, the patch size of a head that emits its slots patch by patch
    (``patch_order``); None = the layout's own (row, col, slot) order.

    One gather reads every sensor's first slot; the few multi-slot sensors (18 centre-patch
    PMTs with the default outer grid) are then corrected to their mean by a small index_add.
    """

    def __init__(self, layout: FaceLayout, reduce: str = "mean", strides: list[tuple[int, int]] | None = None):
        super().__init__()
        if reduce not in ("mean", "first"):
            raise ValueError(f"reduce must be 'mean' or 'first', got {reduce!r}")
        self.reduce = reduce
        remap = np.arange(layout.num_cells)
        if strides is not None:
            for face, st in zip(layout.rect, strides):
                hp, wp = face.shape
                remap[face.offset : face.offset + face.size] = face.offset + patch_order(hp, wp, face.slots, st)
        first = np.empty(layout.n_sensors, dtype=np.int64)
        first[layout.direct_sensors] = layout.direct_cells
        first[layout.multi_sensors] = layout.multi_first
        self.register_buffer("first_cell", torch.as_tensor(remap[first]), persistent=False)
        m, k = layout.multi_cells.shape
        self.k = k
        self.has_multi = m > 0 and reduce == "mean"
        self.register_buffer("multi_sensors", torch.as_tensor(layout.multi_sensors), persistent=False)
        self.register_buffer("multi_cells", torch.as_tensor(remap[layout.multi_cells].reshape(-1)), persistent=False)
        self.register_buffer("multi_weights", torch.as_tensor(layout.multi_weights).unsqueeze(-1), persistent=False)

    def forward(self, cells: torch.Tensor) -> torch.Tensor:
        b, _, c = cells.shape
        flat = gather_rows(cells, self.first_cell)
        if not self.has_multi:
            return flat
        multi = cells.index_select(1, self.multi_cells).reshape(b, -1, self.k, c)
        mean = (multi * self.multi_weights).sum(dim=2)
        # back to the cells' dtype: under bf16 autocast the product (CPU) or the sum (CUDA) is
        # float32, and index_add wants one dtype
        delta = (mean - flat.index_select(1, self.multi_sensors)).to(flat.dtype)
        return flat.index_add(1, self.multi_sensors, delta)
