"""Face layout, XECEncoder and XECMAE: round trips, topology, leakage, masking and losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xec.geometry import FACE_NAMES, N_SENSORS, get_geometry
from xec.models.blocks import HexDepthwiseConv
from xec.models.encoder import XECEncoder
from xec.models.faces import FacesToFlat, patch_order
from xec.models.mae import XECMAE, npho_threshold_normalized, random_mask
from xec.models.presets import model_config
from xec.normalization import get_normalizer

SENTINEL = -1.0


@pytest.fixture(scope="module")
def tiny():
    return model_config({"preset": "tiny"})


@pytest.fixture(scope="module")
def encoder(tiny):
    torch.manual_seed(0)
    return XECEncoder(tiny).eval()


def random_input(b: int, seed: int = 0, dead: float = 0.02, no_time: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, N_SENSORS, 2, generator=g) * 2.0
    x[..., 1][torch.rand(b, N_SENSORS, generator=g) < no_time] = SENTINEL
    x[torch.rand(b, N_SENSORS, generator=g) < dead] = SENTINEL
    return x


# ---------------------------------------------------------------------------- faces
def test_flat_faces_flat_round_trip_is_exact_for_every_sensor(encoder):
    x = torch.randn(3, N_SENSORS, 2, dtype=torch.float64)
    cells = encoder.gather_cells(x)
    back = FacesToFlat(encoder.layout, "first")(cells)
    assert torch.equal(back, x)
    # the decoders' mean over a PMT's slots gives it back up to float rounding
    mean = FacesToFlat(encoder.layout, "mean")(cells.float())
    torch.testing.assert_close(mean, x.float(), rtol=1e-6, atol=1e-6)
    # every sensor appears in the layout, padding reads the extra row
    ids = encoder.layout.gather_idx
    assert set(ids[ids < N_SENSORS].tolist()) == set(range(N_SENSORS))


def test_faces_follow_geometry_index_maps(encoder):
    g = get_geometry()
    x = torch.arange(N_SENSORS, dtype=torch.float64).reshape(1, -1, 1).expand(1, -1, 2)
    cells = encoder.gather_cells(x, fill=-1.0)
    faces = {f.name: f for f in encoder.layout.rect}
    inner = encoder.rect_cells(cells, faces["inner"])[0, 0].numpy()
    assert np.array_equal(inner[:93, :44], g.inner_index)
    assert np.all(inner[93:] == -1) and np.all(inner[:, 44:] == -1)
    for name, idx in (("us", g.us_index), ("ds", g.ds_index)):
        assert np.array_equal(encoder.rect_cells(cells, faces[name])[0, 0].numpy()[:24, :6], idx)
    outer = encoder.rect_cells(cells, faces["outer"])[0, 0::2].numpy()  # (K, Hp, Wp)
    present = set(outer[outer >= 0].astype(int).tolist())
    assert present == set(g.face_ids("outer").tolist())
    # slot 0 of every outer cell is the PMT covering most of it
    grid = g.outer_grid(model_config({"preset": "tiny"}).outer_pool)
    assert np.array_equal(outer[0, : grid.shape[0], : grid.shape[1]], grid.index)
    hex_ids = encoder.hex_cells(cells)[0, :, 0].numpy().astype(int)
    assert np.array_equal(hex_ids, np.concatenate([g.hex_face("top").ids, g.hex_face("bottom").ids]))


def test_patch_order_gather_equals_pixel_shuffle(encoder):
    """FacesToFlat(strides) on patch-ordered head outputs == plain FacesToFlat on the grid."""
    lay = encoder.layout
    x = torch.randn(2, N_SENSORS, 2)
    cells = encoder.gather_cells(x)
    strides = [(f.stem_stride[0] * 2, f.stem_stride[1] * 2) for f in lay.rect]
    patched = cells.clone()
    for f, st in zip(lay.rect, strides):
        hp, wp = f.shape
        pos = torch.as_tensor(patch_order(hp, wp, f.slots, st)) + f.offset
        patched[:, pos] = cells[:, f.offset : f.offset + f.size]
    a = FacesToFlat(lay, "mean", strides)(patched)
    b = FacesToFlat(lay, "mean")(cells)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hex_conv_on_detector_reaches_exactly_physical_neighbours(encoder):
    g = get_geometry()
    hexf = encoder.layout.hex
    xy = np.concatenate([g.hex_face("top").xy, g.hex_face("bottom").xy])
    face = np.repeat([0, 1], hexf.nodes_per_face)
    conv = HexDepthwiseConv(2, hexf.neighbors)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.5)
        conv.bias.zero_()
    n = len(xy)
    for j in (0, 36, 72, 73 + 40, n - 1):
        x = torch.zeros(1, n, 2)
        x[0, j] = 1.0
        reached = set(torch.nonzero(conv(x)[0].abs().sum(-1) > 0).flatten().tolist())
        dist = np.hypot(*(xy - xy[j]).T)
        expected = set(np.nonzero((dist < 7.7) & (face == face[j]))[0].tolist())  # self + neighbours (6.1-7.6 cm)
        assert reached == expected
        assert 3 <= len(expected) <= 7


# ---------------------------------------------------------------------------- encoder
def test_encoder_shapes_and_determinism(encoder, tiny):
    x = random_input(3)
    with torch.no_grad():
        t1 = encoder(x)
        t2 = encoder(x)
    assert t1.shape == (3, len(FACE_NAMES), tiny.token_dim)
    assert encoder.face_names == FACE_NAMES
    assert torch.isfinite(t1).all()
    assert torch.equal(t1, t2)
    # batch items are independent
    with torch.no_grad():
        t_single = encoder(x[1:2])
    torch.testing.assert_close(t_single[0], t1[1], rtol=1e-4, atol=1e-5)


def test_encoder_rejects_wrong_shape(encoder):
    with pytest.raises(ValueError, match="4760"):
        encoder(torch.zeros(2, 4000, 2))


def test_masked_sensors_do_not_leak_into_encoder_output(encoder):
    x = random_input(2, seed=1)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(2, N_SENSORS, generator=g) < 0.6
    x2 = x.clone()
    x2[mask] = torch.rand(int(mask.sum()), 2, generator=g) * 5.0  # new values at hidden sensors
    with torch.no_grad():
        a = encoder.forward_features(x, mask)
        b = encoder.forward_features(x2, mask)
        unmasked = encoder(x2)
    assert torch.equal(a["tokens"], b["tokens"])
    for name in a["rect"]:
        assert torch.equal(a["rect"][name][1], b["rect"][name][1])
    assert torch.equal(a["hex"][0], b["hex"][0])
    assert not torch.allclose(unmasked, a["tokens"])  # the mask does matter
    # hiding a sensor == giving it the sentinel
    x3 = x.clone()
    x3[mask] = SENTINEL
    with torch.no_grad():
        torch.testing.assert_close(encoder(x3), a["tokens"], rtol=0, atol=0)


def test_fcmae_masking_zeroes_fully_hidden_patches(encoder):
    x = random_input(1, seed=2, dead=0.0)
    mask = torch.zeros(1, N_SENSORS, dtype=torch.bool)
    mask[0, :4092] = True  # hide the whole inner face
    with torch.no_grad():
        feats = encoder.forward_features(x, mask)
    f1, f2, k1, k2 = feats["rect"]["inner"]
    assert float(k1.max()) == 0.0 and float(k2.max()) == 0.0
    assert float(f2.abs().max()) == 0.0 and float(f1.abs().max()) == 0.0


# ---------------------------------------------------------------------------- MAE
def test_random_mask_respects_invalid_sensors_and_ratio():
    x = random_input(8, seed=3, dead=0.05, no_time=0.4)
    g = torch.Generator().manual_seed(0)
    mask, cand = random_mask(x, 0.6, SENTINEL, generator=g)
    assert not (mask & (x[..., 1] == SENTINEL)).any()  # already-invalid never picked
    assert abs(mask.sum().item() / cand.sum().item() - 0.6) < 0.02
    mask2, _ = random_mask(x, 0.6, SENTINEL, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, mask2)  # same seed, same mask
    noise = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_mask(x, 0.6, SENTINEL, noise=noise)[0], mask)  # same numbers, same mask
    # npho_valid candidates + time bias: low-light sensors allowed, valid-time ones favoured
    m3, c3 = random_mask(
        x, 0.5, SENTINEL, "npho_valid", time_valid_bias=2.0, generator=torch.Generator().manual_seed(1)
    )
    assert not (m3 & (x[..., 0] == SENTINEL)).any()
    tv = x[..., 1] != SENTINEL
    frac_tv = (m3 & tv).sum() / (c3 & tv).sum()
    frac_nt = (m3 & ~tv).sum() / (c3 & ~tv).sum()
    assert frac_tv > 1.8 * frac_nt
    assert abs(m3.sum().item() / c3.sum().item() - 0.5) < 0.03


def test_npho_threshold_normalized_matches_normalizer():
    norm = get_normalizer("meg2")
    thr = npho_threshold_normalized(norm)
    assert thr == pytest.approx(np.log1p(100.0 / 1000.0) / 4.08, rel=1e-6)


def test_mae_forward_outputs_and_loss_only_on_masked(tiny):
    torch.manual_seed(0)
    mae = XECMAE(tiny, time_npho_threshold=0.05, mask_ratio=0.5).eval()
    x = random_input(2, seed=4)
    out = mae(x, generator=torch.Generator().manual_seed(0))
    assert out["pred"].shape == (2, N_SENSORS, 2)
    assert out["mask"].shape == (2, N_SENSORS) and out["mask"].dtype == torch.bool
    assert out["loss_face"].shape == (6,)
    assert 0.45 < float(out["actual_mask_ratio"]) < 0.55
    assert torch.isfinite(out["loss"])
    # the loss ignores predictions at visible sensors and the time of low-npho sensors
    pred, mask = out["pred"].detach(), out["mask"]
    ref = mae.loss(pred, x, mask)
    p2 = pred.clone()
    p2[~mask] += 10.0
    low = x[..., 0] <= 0.05
    p2[..., 1][low] += 10.0
    alt = mae.loss(p2, x, mask)
    torch.testing.assert_close(alt["loss"], ref["loss"])
    p3 = pred.clone()
    p3[mask] = x[mask]  # perfect at the hidden sensors: zero loss whatever the rest is
    p3[~mask] += 3.0
    perfect = mae.loss(p3, x, mask)
    assert float(perfect["loss"]) == 0.0 and float(ref["loss"]) > 0.0


@pytest.mark.parametrize("kind", ["mse", "l1", "smooth_l1", "huber"])
def test_mae_losses_and_options(tiny, kind):
    mae = XECMAE(tiny, time_npho_threshold=0.05, loss=kind, learn_log_vars=True, time_weight_sqrt_npho=True)
    x = random_input(2, seed=5)
    mask = torch.rand(2, N_SENSORS) < 0.5
    pred = x.clone()
    pred[..., 1] = torch.where(x[..., 1] == SENTINEL, 0.0, x[..., 1])
    out = mae.loss(pred, x, mask)
    assert float(out["loss_npho"]) == 0.0 and float(out["loss_time"]) == 0.0
    out = mae.loss(pred + 0.5, x, mask)
    assert float(out["loss_npho"]) > 0 and float(out["loss_time"]) > 0
    out["loss"].backward()
    assert mae.log_vars.grad is not None


def test_mae_gradients_reach_every_parameter(tiny):
    torch.manual_seed(0)
    mae = XECMAE(tiny, time_npho_threshold=0.05)
    out = mae(random_input(4, seed=6))
    out["loss"].backward()
    missing = [n for n, p in mae.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # GRN gamma/beta start at zero; their gradient must still be non-zero
    zero = [n for n, p in mae.named_parameters() if float(p.grad.abs().sum()) == 0.0]
    assert not zero, zero


def test_drop_path_is_stochastic_in_training_only():
    cfg = model_config({"preset": "tiny", "drop_path": 0.5})
    torch.manual_seed(0)
    enc = XECEncoder(cfg)
    x = random_input(4, seed=7)
    enc.train()
    torch.manual_seed(1)
    a = enc(x)
    torch.manual_seed(2)
    b = enc(x)
    assert not torch.allclose(a, b)
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), enc(x))
