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


# ------------------------------------------------------------------ WeatherBench2 grids
def _wb2_lat_weights(lat_deg: np.ndarray) -> np.ndarray:
    """WB2's get_lat_weights (weatherbench2/utils.py), transcribed: latitudes S → N, cell bounds at
    the midpoints and ±90°, sin(upper) − sin(lower), normalised to mean 1."""
    lat = np.deg2rad(np.sort(lat_deg))
    bounds = np.concatenate([[-np.pi / 2], (lat[:-1] + lat[1:]) / 2, [np.pi / 2]])
    w = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return w / w.mean()


@pytest.mark.parametrize(
    "lat_s_to_n, poles",
    [
        (np.linspace(-87.1875, 87.1875, 32), False),  # WB2 64×32, 5.625°
        (np.linspace(-88.59375, 88.59375, 64), False),  # WB2 128×64, 2.8125°
        (np.linspace(-90.0, 90.0, 121), True),  # WB2 240×121, 1.5°
        (np.linspace(-90.0, 90.0, 721), True),  # ERA5 0.25°
    ],
)
def test_wb2_grids_are_equiangular_with_wb2_weights(lat_s_to_n, poles):
    nlon = 2 * (lat_s_to_n.size - (1 if poles else 0))
    lon = np.arange(nlon) * 360.0 / nlon
    g = Grid.from_coords(lat_s_to_n[::-1], lon)
    assert g.kind == "equiangular" and g.poles is poles
    np.testing.assert_allclose(g.weights, _wb2_lat_weights(lat_s_to_n)[::-1], rtol=0, atol=1e-12)
    assert g == Grid.equiangular(lat_s_to_n.size, nlon, poles=poles)
    back = Grid.from_dict(g.to_dict())
    assert back == g and back.poles is poles and np.allclose(back.weights, g.weights, rtol=0, atol=1e-14)
    assert ("poles" in g.to_dict()) is (not poles)  # dicts of grids with poles are unchanged


def test_old_dicts_and_pole_less_grid_details():
    assert Grid.from_dict({"kind": "equiangular", "nlat": 121, "nlon": 240}).poles
    g = Grid.equiangular(32, 64, poles=False)
    assert g.lat[0] == 87.1875 and g.lat[-1] == -87.1875 and g.describe() == "equiangular 32×64 without poles"
    # the polar rows are whole bands 84.375° … 90°, not caps clipped at a pole
    assert g.weights[0] / g.weights[16] == pytest.approx(
        (1 - np.sin(np.deg2rad(84.375))) / np.sin(np.deg2rad(5.625)), rel=1e-12)  # row 16: −5.625° … 0°
    with pytest.raises(DataError, match="spectral transforms need"):
        g.sht_grid  # noqa: B018


def test_gaussian_only_on_gauss_legendre_nodes():
    g = Grid.t42()
    assert Grid.from_coords(g.lat, g.lon).kind == "gaussian"
    off = g.lat.copy()
    off[5] += 1e-4  # 1e-4° off one node: not Gaussian, not equiangular
    with pytest.raises(DataError, match="neither equiangular .* nor the Gauss–Legendre nodes"):
        Grid.from_coords(off, g.lon)
    with pytest.raises(DataError, match="neither equiangular"):  # equally spaced but not global
        Grid.from_coords(np.linspace(60.0, -60.0, 41), np.arange(8) * 45.0)
