"""Spurious and core directions from linear probes, against the planted directions and the
group-mean estimates (embedkit.geometry.directions)."""

import numpy as np
import pytest

from embedkit.analysis import probes
from embedkit.errors import EmbedkitError
from embedkit.data.synthetic import planted_arrays


@pytest.fixture(scope="module")
def planted():
    arr = planted_arrays({"train": 3000, "val": 10, "test": 10}, dim=32, seed=0)
    tr = arr["split"] == 0
    return arr["Z"][tr], arr["y"][tr], arr["a"][tr], arr["u"], arr["v"]


def test_probe_directions_recover_the_planted_axes(planted):
    Z, y, a, u, v = planted
    est = probes.direction_estimates(Z, y, a, 2, 2)
    for source in ("group_mean", "probe"):
        sp, core = est[source]["spurious"], est[source]["core"]
        # oriented from value 0 to value 1, as s(k) = 2k - 1 plants them
        assert sp @ v / np.linalg.norm(sp) > 0.9, source
        assert core @ u / np.linalg.norm(core) > 0.9, source
    assert est["cos_group_mean_vs_probe"]["spurious"] > 0.9
    assert est["cos_group_mean_vs_probe"]["core"] > 0.9


def test_group_balanced_weights_keep_the_class_out_of_the_attribute_probe(planted):
    # 95 % of train rows have a = y: an unweighted attribute probe would lean on the class axis u.
    Z, y, a, u, v = planted
    w = probes._balanced_weights(y, a)
    g = y * 2 + a
    sums = np.bincount(g, weights=w)
    np.testing.assert_allclose(sums / sums.sum(), 0.25)  # every group weighs the same
    d = probes.probe_directions(Z, y, a)["spurious"]["direction"]
    assert abs(d @ u) < 0.15


def test_linear_probe_maps_weights_back_to_raw_coordinates():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(400, 3)).astype(np.float32) * np.array([1.0, 10.0, 0.1], np.float32) + 5
    t = (Z[:, 1] > 5).astype(int)
    p = probes.linear_probe(Z, t)
    dec = Z @ p["W"][0] + p["b"][0]
    assert np.mean((dec > 0) == t) > 0.97
    assert abs(p["direction"][1]) > 0.9 and p["classes"] == [0, 1]


def test_multi_valued_probe_gives_one_unit_direction():
    rng = np.random.default_rng(1)
    t = np.repeat([0, 1, 2], 100)
    Z = rng.normal(size=(300, 4)).astype(np.float32)
    Z[:, 0] += 3 * t
    p = probes.linear_probe(Z, t)
    assert p["W"].shape == (3, 4)
    assert (
        np.linalg.norm(p["direction"]) == pytest.approx(1.0, abs=1e-6) and p["direction"][0] > 0.9
    )


def test_probe_needs_two_values():
    with pytest.raises(EmbedkitError, match="two"):
        probes.probe_directions(np.zeros((5, 2)), np.zeros(5, int), np.zeros(5, int))
