"""Grid: orientation, shapes, area weights (WB2 convention), Gaussian quadrature, coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from aivarda.errors import DataError
from aivarda.grid import Grid


def test_era5_grid_shape_orientation_and_weights():
    g = Grid.era5()
    assert g.shape == (721, 1440) and g.kind == "equiangular" and g.sht_grid == "equiangular"
    assert g.lat[0] == 90.0 and g.lat[-1] == -90.0 and np.all(np.diff(g.lat) < 0)
    assert g.lon[0] == 0.0 and g.lon[-1] == pytest.approx(359.75) and np.allclose(np.diff(g.lon), 0.25)
    w = g.weights
    assert w.shape == (721,) and w.mean() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(w, w[::-1]) and w.argmax() == 360  # symmetric, largest on the equator


@pytest.mark.parametrize("shape", [(721, 1440), (128, 256), (9, 16)])
def test_equiangular_weights_are_band_areas(shape):
    g = Grid.equiangular(*shape)
    w = g.weights
    phi = np.deg2rad(g.lat)
    h = 0.5 * abs(phi[0] - phi[1])
    # interior rows: sin(φ+h) − sin(φ−h) = 2 sin(h) cos φ, exactly ∝ cos φ
    ratio = w[1:-1] / np.cos(phi[1:-1])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-10)
    # pole rows: the cap from 90° − h to 90°, area 1 − cos h (interior band: 2 sin h cos φ)
    assert w[0] / w[1] == pytest.approx((1 - np.cos(h)) / (2 * np.sin(h) * np.cos(phi[1])), rel=1e-10)
    # the bands tile the sphere: Σ_i (band area) = 4π with band area = 2π (sin upper − sin lower)
    band = w / w.mean() * (2.0 / g.nlat)  # sin upper − sin lower, telescoping to 2
    assert 2 * np.pi * band.sum() == pytest.approx(4 * np.pi, rel=1e-12)


def test_area_mean_integrates_zonal_functions():
    for g, tol in ((Grid.equiangular(721, 1440), 1e-5), (Grid.equiangular(128, 256), 1e-3)):
        mu = np.sin(np.deg2rad(g.lat))
        assert np.mean(g.weights * mu**2) == pytest.approx(1 / 3, abs=tol)  # ∫ sin²φ dA / 4π
        assert np.mean(g.weights * mu) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_grid_is_exact_quadrature():
    g = Grid.t42()
    assert g.shape == (64, 128) and g.kind == "gaussian" and g.sht_grid == "legendre-gauss"
    assert np.all(np.diff(g.lat) < 0) and g.lat[0] < 90.0 and g.lat[0] == pytest.approx(-g.lat[-1])
    mu = np.sin(np.deg2rad(g.lat))
    w = g.weights
    assert w.mean() == pytest.approx(1.0, abs=1e-12)
    for k in range(0, 2 * 64, 2):  # exact for polynomials in μ up to degree 2n − 1
        assert np.mean(w * mu**k) == pytest.approx(1.0 / (k + 1), rel=1e-10)
    assert np.mean(w * mu**3) == pytest.approx(0.0, abs=1e-14)


def test_from_coords_and_dict_round_trip():
    for g in (Grid.t42(), Grid.era5(), Grid.equiangular(9, 16), Grid.gaussian(16, 32)):
        assert Grid.from_coords(g.lat.astype(np.float32), g.lon) == g
        assert Grid.from_coords(g.lat, g.lon).kind == g.kind
        back = Grid.from_dict(g.to_dict())
        assert back == g and hash(back) == hash(g)
    assert Grid.t42() != Grid.gaussian(64, 256) and Grid.t42() != Grid.equiangular(64, 128)
    assert Grid.t42().describe() == "gaussian 64×128"


@pytest.mark.parametrize(
    "lat, lon, kind, message",
    [
        (np.array([-90.0, 0.0, 90.0]), np.arange(4) * 90.0, "equiangular", "north → south"),
        (np.array([91.0, 0.0, -90.0]), np.arange(4) * 90.0, "equiangular", r"\[-90, 90\]"),
        (np.array([90.0, 0.0, -90.0]), np.arange(4) * 90.0, "regular", "kind must be"),
        (np.array([0.0]), np.arange(4) * 90.0, "equiangular", "≥ 2 points"),
    ],
)
def test_invalid_grids_are_data_errors(lat, lon, kind, message):
    with pytest.raises(DataError, match=message):
        Grid(lat, lon, kind)
