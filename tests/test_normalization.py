import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xec.errors import XecError
from xec.normalization import NPHO_TRANSFORMS, PRESETS, Normalizer, get_normalizer

valid_npho = st.floats(min_value=0.0, max_value=5e6, allow_nan=False)
valid_time = st.floats(min_value=-5e-7, max_value=5e-7, allow_nan=False)


def test_meg2_constants():
    n = get_normalizer()
    assert n.preset == "meg2"
    assert (n.npho_scale, n.npho_scale2, n.time_scale, n.time_shift, n.sentinel, n.npho_threshold) == (
        1000.0,
        4.08,
        1.14e-7,
        -0.46,
        -1.0,
        100.0,
    )
    npho_n, time_n = n.normalize(np.array([1000.0]), np.array([1.14e-7]))
    assert npho_n[0] == pytest.approx(math.log(2) / 4.08, rel=1e-6)
    assert time_n[0] == pytest.approx(1.46, rel=1e-6)


def test_legacy_constants():
    n = get_normalizer("legacy")
    assert (n.npho_scale, n.npho_scale2, n.time_scale, n.time_shift, n.sentinel) == (0.58, 1.0, 6.5e-8, 0.5, -5.0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("transform", NPHO_TRANSFORMS)
@settings(max_examples=60, deadline=None)
@given(data=hnp.arrays(np.float64, st.integers(1, 50), elements=valid_npho), t=valid_time)
def test_round_trip_on_valid_sensors(preset, transform, data, t):
    n = get_normalizer(preset, npho_transform=transform)
    time = np.full_like(data, t)
    npho_n, time_n = n.normalize(data, time)
    back = n.denormalize_npho(npho_n)
    np.testing.assert_allclose(back, data, rtol=2e-5, atol=2e-3 * n.npho_scale)
    has_time = data >= n.npho_threshold
    np.testing.assert_allclose(n.denormalize_time(time_n[has_time]), time[has_time], rtol=1e-5, atol=1e-13)
    assert np.all(time_n[~has_time] == np.float32(n.sentinel))


@settings(max_examples=100, deadline=None)
@given(
    npho=st.one_of(st.just(1e10), st.just(np.nan), st.just(np.inf), st.floats(9.0000001e9, 1e30)),
    t=st.one_of(valid_time, st.just(np.nan), st.just(1e10)),
)
def test_dead_sensor_rule(npho, t):
    n = get_normalizer()
    npho_n, time_n = n.normalize(np.array([npho]), np.array([t]))
    assert npho_n[0] == n.sentinel and time_n[0] == n.sentinel


@settings(max_examples=100, deadline=None)
@given(npho=st.one_of(st.floats(-1e6, -1e-9), st.just(-np.inf)), t=valid_time)
def test_negative_npho_is_zero_without_time(npho, t):
    n = get_normalizer()
    npho_n, time_n = n.normalize(np.array([npho]), np.array([t]))
    assert npho_n[0] == 0.0 and time_n[0] == n.sentinel


@settings(max_examples=100, deadline=None)
@given(npho=st.floats(0, 99.999), t=valid_time)
def test_below_threshold_has_no_time(npho, t):
    n = get_normalizer()
    npho_n, time_n = n.normalize(np.array([npho]), np.array([t]))
    assert np.isfinite(npho_n[0]) and npho_n[0] >= 0 and time_n[0] == n.sentinel


@settings(max_examples=100, deadline=None)
@given(
    npho=st.floats(100, 1e6),
    t=st.one_of(
        st.just(np.nan),
        st.just(np.inf),
        st.just(-np.inf),
        st.just(1e10),
        st.floats(9.0000001e9, 1e20),
        st.floats(-1e20, -9.0000001e9),
    ),
)
def test_invalid_time_rule(npho, t):
    n = get_normalizer()
    npho_n, time_n = n.normalize(np.array([npho]), np.array([t]))
    assert npho_n[0] > 0 and time_n[0] == n.sentinel


def test_output_never_nan():
    n = get_normalizer()
    npho = np.array([np.nan, np.inf, -np.inf, 1e10, -3.0, 0.0, 50.0, 1e4])
    time = np.array([np.nan, 1.0e-8, np.inf, 1e10, 0.0, np.nan, 1e-8, -np.inf])
    x = n.normalize_events(npho[None], time[None])
    assert x.shape == (1, 8, 2) and x.dtype == np.float32 and np.isfinite(x).all()


def test_errors():
    with pytest.raises(XecError, match="unknown normalization preset 'nope'"):
        get_normalizer("nope")
    with pytest.raises(XecError, match="npho_scale must be a positive"):
        get_normalizer("meg2", npho_scale=-1.0)
    with pytest.raises(XecError, match="unknown npho transform"):
        get_normalizer("meg2", npho_transform="cube")
    with pytest.raises(XecError, match="sentinel must be negative"):
        get_normalizer("meg2", sentinel=0.5)


def test_artifact_round_trip_and_mismatch():
    n = get_normalizer()
    assert Normalizer.from_dict(n.to_dict()) == n
    n.check_compatible(n.to_dict(), where="manifest.json")
    with pytest.raises(XecError, match="normalization mismatch with model.onnx: preset"):
        n.check_compatible(get_normalizer("legacy"), where="model.onnx")


@pytest.mark.parametrize("transform", ["log1p", "sqrt", "anscombe", "linear"])
def test_torch_and_numpy_share_the_formulas(transform):
    """The same expressions serve numpy (shards) and torch (losses, the raw-unit export graph)."""
    import torch

    n = get_normalizer("meg2", npho_transform=transform)
    rng = np.random.default_rng(4)
    npho = rng.exponential(500.0, 2000)
    npho[::50], npho[1::50], npho[2::50] = 1e10, np.nan, -3.0
    time = rng.normal(3e-8, 1e-8, 2000)
    time[3::50], time[4::50] = 1e10, np.nan
    ref_n, ref_t = n.normalize(npho, time)
    got_n, got_t = n.apply(torch.from_numpy(npho), torch.from_numpy(time))
    np.testing.assert_array_equal(got_n.numpy().astype(np.float32), ref_n)
    np.testing.assert_array_equal(got_t.numpy().astype(np.float32), ref_t)
    valid = ref_n != n.sentinel
    back = n.npho_inverse(torch.from_numpy(ref_n[valid].astype(np.float64))).numpy()
    np.testing.assert_allclose(back, n.denormalize_npho(ref_n[valid]), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("transform", ["log1p", "sqrt", "anscombe", "linear"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_events_equals_apply_bit_for_bit(transform, dtype):
    """The in-place fast path of normalize_events gives apply's numbers on every invalid-value
    case (dead 1e10 and NaN npho, negative and -inf npho, the threshold edge, 1e10/NaN/inf
    times), leaves its inputs untouched and fills a given ``out``."""
    n = get_normalizer("meg2", npho_transform=transform)
    rng = np.random.default_rng(7)
    npho = rng.exponential(500.0, (40, 4760))
    npho[:, ::50], npho[:, 1::50], npho[:, 2::50], npho[:, 3::50] = 1e10, np.nan, -3.0, -np.inf
    npho[:, 4::50] = n.npho_threshold
    time = rng.normal(3e-8, 1e-8, (40, 4760))
    time[:, 5::50], time[:, 6::50], time[:, 7::50] = 1e10, np.nan, -np.inf
    npho, time = npho.astype(dtype), time.astype(dtype)
    before = npho.copy(), time.copy()
    ref_n, ref_t = n.normalize(npho, time)
    out = np.full((40, 4760, 2), 123.0, np.float32)
    got = n.normalize_events(npho, time, out=out)
    assert got is out
    np.testing.assert_array_equal(got[..., 0], ref_n)
    np.testing.assert_array_equal(got[..., 1], ref_t)
    np.testing.assert_array_equal(npho, before[0])
    np.testing.assert_array_equal(time, before[1])
    assert (got[:, ::50, 0] == n.sentinel).all() and (got[:, 3::50, 0] == 0.0).all()


@pytest.mark.parametrize("transform", ["log1p", "sqrt", "anscombe", "linear"])
def test_normalize_events_float32_within_an_ulp_of_float64(transform):
    """xec infer's float32 normalization: on float32 inputs (the ROOT branches' type) the same
    sentinels and zeros on every invalid-value case, every value within 2 float32 ulp of the
    float64 numbers in absolute terms (ulp of max(|value|, 1): near 0, log1p and the anscombe
    shift cancel); an unknown precision is an error."""
    n = get_normalizer("meg2", npho_transform=transform)
    rng = np.random.default_rng(8)
    npho = rng.exponential(500.0, (40, 4760))
    npho[:, ::50], npho[:, 1::50], npho[:, 2::50], npho[:, 3::50] = 1e10, np.nan, -3.0, -np.inf
    npho[:, 4::50] = n.npho_threshold
    npho[:, 8::50] = 3e5  # bright sensors: the largest normalized values
    time = rng.normal(3e-8, 1e-8, (40, 4760))
    time[:, 5::50], time[:, 6::50], time[:, 7::50] = 1e10, np.nan, -np.inf
    npho, time = npho.astype(np.float32), time.astype(np.float32)
    exact = n.normalize_events(npho, time)
    fast = n.normalize_events(npho, time, precision="float32")
    assert fast.dtype == np.float32
    special = (exact == n.sentinel) | (exact == 0.0)
    np.testing.assert_array_equal(fast == n.sentinel, exact == n.sentinel)
    np.testing.assert_array_equal(fast[special], exact[special])
    ulp = np.spacing(np.maximum(np.abs(exact[~special]), np.float32(1.0)))
    assert (np.abs(fast[~special] - exact[~special]) <= 2 * ulp).all()
    with pytest.raises(XecError, match="precision"):
        n.normalize_events(npho, time, precision="float16")
