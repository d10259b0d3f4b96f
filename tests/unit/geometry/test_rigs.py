import numpy as np
import pytest

from geometry.cameras import fov_from_intrinsics
from geometry.rigs import (
    LRM32_RADIUS,
    NEIGHBOUR_OFFSETS,
    ONE2345_FOV_DEG,
    ONE2345_NUM_VIEWS,
    ONE2345_RADIUS,
    make_rig,
    with_neighbours,
)


def _elevation_azimuth(c2w):
    p = c2w[:, :3, 3]
    r = np.linalg.norm(p, axis=1)
    el = np.degrees(np.arcsin(p[:, 2] / r))
    az = np.degrees(np.arctan2(p[:, 0], -p[:, 1])) % 360
    return r, el, az


@pytest.mark.parametrize("name", ["lrm32", "orbit", "one2345", "eval24"])
def test_rigs_are_deterministic_per_object_and_look_at_the_origin(name):
    a, b = make_rig(name, "obj-1", 64), make_rig(name, "obj-1", 64)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    for c2w in a.c2w:  # optical axis passes through the origin
        o, d = c2w[:3, 3], c2w[:3, 2]
        assert np.linalg.norm(np.cross(d, -o)) < 1e-9 and np.dot(d, -o) > 0
        assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
    assert len(a.roles) == len(a) and a.hw.tolist()[0] == [64, 64]


def test_random_rigs_differ_between_objects_and_seeds():
    assert not np.allclose(make_rig("lrm32", "a", 64).c2w, make_rig("lrm32", "b", 64).c2w)
    assert not np.allclose(make_rig("lrm32", "a", 64).c2w, make_rig("lrm32", "a", 64, seed=1).c2w)


def test_lrm32_shell_and_front_source_view():
    for uid in ["x", "y", "z", "w"]:
        rig = make_rig("lrm32", uid, 512)
        r, el, az = _elevation_azimuth(rig.c2w)
        assert len(rig) == 32 and rig.roles[0] == "source"
        assert np.all((r >= LRM32_RADIUS[0] - 1e-9) & (r <= LRM32_RADIUS[1] + 1e-9))
        assert np.all((el >= -20 - 1e-9) & (el <= 60 + 1e-9))
        assert 0 <= el[0] <= 30 and (az[0] <= 30 or az[0] >= 330)
        assert fov_from_intrinsics(rig.K[0], 512, 512) == pytest.approx(50.0)


def test_one2345_neighbours_are_ten_degrees_away():
    rig = make_rig("one2345", "obj", 256)
    _, el, az = _elevation_azimuth(rig.c2w)
    assert len(rig) == 40 and rig.roles.count("gt") == 8 and rig.roles.count("gt_neighbor") == 32
    for i, nbs in rig.extra["neighbours_of"].items():
        d_el = sorted(np.round(el[nbs] - el[i], 6))
        d_az = sorted(np.round((az[nbs] - az[i] + 180) % 360 - 180, 6))
        assert d_el == [-10, 0, 0, 10] and d_az == [-10, 0, 0, 10]


def test_one2345_layout_lists_the_views_then_four_neighbours_each_in_order():
    assert NEIGHBOUR_OFFSETS == ((10.0, 0.0), (-10.0, 0.0), (0.0, 10.0), (0.0, -10.0))
    # Zero123's framing (geometry/rigs.py): a 35 mm lens on a 32 mm sensor, at the distance that frames the object
    assert ONE2345_NUM_VIEWS == 8
    assert (ONE2345_RADIUS, ONE2345_FOV_DEG) == pytest.approx((4.3743, 49.1343), abs=1e-4)
    el, az, owners = with_neighbours([20.0, 5.0], [0.0, 355.0])
    np.testing.assert_allclose(el, [20, 5, 30, 10, 20, 20, 15, -5, 5, 5])
    np.testing.assert_allclose(az, [0, 355, 0, 0, 10, 350, 355, 355, 5, 345])  # wrapped to [0, 360)
    assert owners.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="2 elevations for 1 azimuths"):
        with_neighbours([0.0, 1.0], [0.0])
    # the one2345 rig renders exactly that layout: radius, FOV, and each gt view's neighbours at the offsets in order
    rig = make_rig("one2345", "obj", 256)
    r, el, az = _elevation_azimuth(rig.c2w)
    np.testing.assert_allclose(r, ONE2345_RADIUS)
    assert fov_from_intrinsics(rig.K[0], 256, 256) == pytest.approx(ONE2345_FOV_DEG)
    assert sorted(rig.extra["neighbours_of"]) == list(range(ONE2345_NUM_VIEWS))
    for g, nbrs in rig.extra["neighbours_of"].items():
        assert nbrs == list(range(8 + 4 * g, 12 + 4 * g))
        np.testing.assert_allclose(el[nbrs] - el[g], [d for d, _ in NEIGHBOUR_OFFSETS], atol=1e-9)
        np.testing.assert_allclose((az[nbrs] - az[g] + 180) % 360 - 180, [d for _, d in NEIGHBOUR_OFFSETS], atol=1e-9)


def test_eval24_rings():
    _, el, az = _elevation_azimuth(make_rig("eval24", "any", 128).c2w)
    np.testing.assert_allclose(el, [30] * 12 + [0] * 12, atol=1e-9)
    np.testing.assert_allclose(np.sort(az[:12]), np.arange(12) * 30, atol=1e-9)


def test_unknown_rig_names_the_choices():
    with pytest.raises(ValueError, match="lrm32"):
        make_rig("lrm64", "x", 64)
