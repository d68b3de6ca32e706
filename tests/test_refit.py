"""The regressor's head refit (xec.train.refit) on synthetic head inputs with a known answer."""

from __future__ import annotations

import copy

import pytest
import torch

from xec.errors import XecError
from xec.train.refit import fit_heads, refit_bf16, refit_spec

L1 = lambda pred, y: (pred - y).abs()  # noqa: E731


def synthetic_cache(n: int = 2048, seed: int = 0) -> dict[str, torch.Tensor]:
    """y = loc @ A + 0.5 * tanh(z_0): the head's linear path and its MLP each have a part to learn."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 12, generator=g)
    loc = torch.randn(n, 4, generator=g)
    a = torch.randn(4, 3, generator=g)
    y = loc @ a + 0.5 * torch.tanh(z[:, :1])
    return {"z": z, "loc": loc, "y_uvwFI": y, "w_uvwFI": torch.ones(n)}


def test_fit_head_learns_a_known_function():
    cache = synthetic_cache()
    start = L1(torch.zeros_like(cache["y_uvwFI"]), cache["y_uvwFI"]).mean().item()
    head, last = fit_heads(cache, {"uvwFI": L1}, 32, 20, 3e-3, 64, seed=1, device=torch.device("cpu"))["uvwFI"]
    assert not head.training
    with torch.no_grad():
        err = L1(head(cache["z"], cache["loc"]), cache["y_uvwFI"]).mean().item()
    assert start > 1.0
    assert err < 0.05 * start
    assert last == pytest.approx(err, rel=0.5)  # the last epoch's training loss is of the same size
    assert head.fc1.out_features == 32


def test_fit_head_is_seeded_and_follows_the_weights():
    cache = synthetic_cache(512)
    heads = [
        fit_heads(cache, {"uvwFI": L1}, 16, 2, 1e-3, 64, seed=5, device=torch.device("cpu"))["uvwFI"][0]
        for _ in range(2)
    ]
    for p, q in zip(heads[0].parameters(), heads[1].parameters()):
        assert torch.equal(p, q)
    # half the events carry garbage targets at weight 0: the head fits the other half as if alone
    bad = synthetic_cache(1024, seed=3)
    bad["y_uvwFI"][512:] = 100.0
    bad["w_uvwFI"][512:] = 0.0
    head, _ = fit_heads(bad, {"uvwFI": L1}, 32, 20, 3e-3, 64, seed=1, device=torch.device("cpu"))["uvwFI"]
    with torch.no_grad():
        pred = head(bad["z"][:512], bad["loc"][:512])
    assert L1(pred, bad["y_uvwFI"][:512]).mean().item() < 0.15


def test_heads_fitted_together_equal_heads_fitted_alone():
    """One loop for several heads (summed loss, one optimizer step) trains each as if alone."""
    cache = synthetic_cache(512)
    cache["y_angle"] = -2.0 * cache["y_uvwFI"][:, :2]
    cache["w_angle"] = torch.rand(512, generator=torch.Generator().manual_seed(4))
    cpu = torch.device("cpu")
    together = fit_heads(cache, {"uvwFI": L1, "angle": L1}, 16, 2, 1e-3, 64, seed=7, device=cpu)
    alone = fit_heads(cache, {"uvwFI": L1}, 16, 2, 1e-3, 64, seed=7, device=cpu)
    for p, q in zip(together["uvwFI"][0].parameters(), alone["uvwFI"][0].parameters()):
        torch.testing.assert_close(p, q)
    assert together["angle"][0].fc2.out_features == 2


@pytest.mark.parametrize(
    "tasks, losses, message",
    [
        (["timing"], {"timing": {"type": "l1"}}, "cannot be refitted"),
        (["angle"], {"angle": {"type": "l1"}}, "not among regressor.tasks"),
        (["uvwFI"], {"uvwFI": {"type": "gaussian_nll"}}, "gaussian_nll"),
    ],
)
def test_refit_spec_errors_name_the_key(tasks, losses, message):
    spec = {"tasks": tasks, "hidden": 8, "epochs": 1, "lr": 1e-3, "batch_size": 8, "max_events": None}
    regressor_tasks = ["energy", "timing", "uvwFI"]
    with pytest.raises(XecError, match="regressor.head_refit.tasks") as err:
        refit_spec(spec, regressor_tasks, losses)
    assert message in str(err.value)


def test_angle_is_not_refitted_when_it_corrects_the_geometric_angle():
    spec = {"tasks": ["uvwFI", "angle"], "hidden": 8, "epochs": 1, "lr": 1e-3, "batch_size": 8, "max_events": None}
    losses = {"uvwFI": {"type": "l1"}, "angle": {"type": "l1"}}
    assert refit_spec(spec, ["angle", "uvwFI"], losses)["tasks"] == ["uvwFI", "angle"]
    with pytest.raises(XecError, match="model.angle_from_position"):
        refit_spec(spec, ["angle", "uvwFI"], losses, angle_from_position=True)
    # without the position task there is no geometric angle: the angle head predicts it alone
    assert refit_spec({**spec, "tasks": ["angle"]}, ["angle"], {"angle": {"type": "l1"}}, angle_from_position=True)


def peak_window_case(n: int = 2048) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """A cache whose uvwFI target only new features of the peak window explain, and a shared MLP
    nearly blind to the window (as a badly trained one)."""
    g = torch.Generator().manual_seed(0)
    window = torch.randn(n, 8, generator=g)
    cache = {
        "z": torch.randn(n, 6, generator=g),
        "window": window,
        "passed": torch.randn(n, 2, generator=g),
        "extra": torch.randn(n, 1, generator=g),
    }
    cache["y_uvwFI"] = torch.stack([window[:, 0] * window[:, 1], window[:, 2].abs(), torch.sin(window[:, 3])], 1)
    cache["w_uvwFI"] = torch.ones(n)
    torch.manual_seed(3)
    mlp0 = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 2))
    with torch.no_grad():
        mlp0[-1].weight.mul_(0.01)
    return cache, mlp0


def peak_refit_error(cache: dict, mlp: torch.nn.Module, head: torch.nn.Module) -> float:
    """The refitted head's L1 error over the cache, its MLP evaluated in float32."""
    with torch.no_grad():
        loc = torch.cat([mlp(cache["window"]), cache["passed"], cache["extra"]], 1)
        return L1(head(cache["z"], loc), cache["y_uvwFI"]).mean().item()


def test_peak_mlp_is_trained_with_the_heads():
    """fit_heads(peak_mlp=...): the heads read loc = [peak_mlp(window), passed, extra], and the
    MLP learns with them: a target that only a new feature of the window explains is fitted,
    which the same heads on the frozen MLP's features cannot do."""
    cache, mlp0 = peak_window_case()
    frozen = dict(cache)
    with torch.no_grad():
        frozen["loc"] = torch.cat([mlp0(cache["window"]), cache["passed"], cache["extra"]], 1)
    cpu = torch.device("cpu")
    mlp = copy.deepcopy(mlp0)
    head_f, _ = fit_heads(frozen, {"uvwFI": L1}, 32, 20, 3e-3, 64, seed=1, device=cpu)["uvwFI"]
    head_p, last = fit_heads(cache, {"uvwFI": L1}, 32, 20, 3e-3, 64, seed=1, device=cpu, peak_mlp=mlp)["uvwFI"]
    assert not mlp.training and not torch.equal(mlp[0].weight, mlp0[0].weight)
    with torch.no_grad():
        err_f = L1(head_f(cache["z"], frozen["loc"]), cache["y_uvwFI"]).mean().item()
    err_p = peak_refit_error(cache, mlp, head_p)
    assert err_p < 0.5 * err_f
    assert last == pytest.approx(err_p, rel=0.5)


def test_peak_mlp_in_bf16_learns_as_in_fp32():
    """mlp_bf16: the MLP's products in bfloat16, its weights float32 and updated every step (a cast
    cache kept across steps would train the heads on the first step's weights: then the float32
    evaluation below would disagree with the last epoch's loss)."""
    cache, mlp0 = peak_window_case()
    cpu = torch.device("cpu")
    errors, lasts = {}, {}
    for bf16 in (False, True):
        mlp = copy.deepcopy(mlp0)
        head, lasts[bf16] = fit_heads(
            cache, {"uvwFI": L1}, 32, 20, 3e-3, 64, seed=1, device=cpu, peak_mlp=mlp, mlp_bf16=bf16
        )["uvwFI"]
        assert all(p.dtype == torch.float32 for p in mlp.parameters())
        errors[bf16] = peak_refit_error(cache, mlp, head)
    assert errors[True] != errors[False]  # the products did run in bf16
    assert errors[True] == pytest.approx(errors[False], rel=0.25)
    assert lasts[True] == pytest.approx(errors[True], rel=0.5)


@pytest.mark.parametrize(
    "precision, device, native, expected",
    [
        ("auto", "cpu", True, True),
        ("auto", "cpu", False, False),
        ("auto", "cuda", False, True),
        ("fp32", "cuda", True, False),
        ("bf16", "cpu", False, True),
    ],
)
def test_refit_precision_auto_follows_the_hardware(monkeypatch, precision, device, native, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert refit_bf16(precision, torch.device(device)) is expected
