"""The procedural source (render_farm/procedural.py): determinism, variety, the augmentations' geometry, the
source the farm renders from, and its command line."""

import collections
import hashlib
import json

import numpy as np
import pytest
import trimesh

from render_farm import procedural as P
from render_farm.cli import build_parser, main
from render_farm.tasks import task_slice


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_same_seed_and_index_give_the_same_glb_bytes_and_the_stored_recipe_regenerates_them():
    for index in (0, 7):
        recipe = P.make_recipe(3, index)
        data = P.build_glb(recipe)
        assert P.make_recipe(3, index) == recipe and P.build_glb(P.make_recipe(3, index)) == data
        stored = json.loads(json.dumps(recipe))  # what meta.json keeps
        assert P.build_glb(stored) == data
        assert (stored["generator"], stored["version"], stored["seed"], stored["index"]) == \
            (P.GENERATOR, P.GENERATOR_VERSION, 3, index)


def test_other_seeds_and_indices_give_other_objects():
    digests = {_sha(P.build_glb(P.make_recipe(seed, index))) for seed in (0, 1, 2) for index in range(4)}
    assert len(digests) == 12
    a, b = P.make_recipe(0, 5), P.make_recipe(1, 5)
    assert a["parts"] != b["parts"]


def test_two_hundred_recipes_use_every_primitive_augmentation_and_texture_with_spread_sizes():
    recipes = [P.make_recipe(11, i) for i in range(200)]
    parts = [p for r in recipes for p in r["parts"]]
    kinds = collections.Counter(p["kind"] for p in parts)
    augs = collections.Counter(P.augmentation_of(p) for p in parts)
    textures = collections.Counter(p["texture"]["kind"] for p in parts)
    cutters = collections.Counter(p["boolean_difference"]["cutter"] for p in parts if "boolean_difference" in p)
    counts = collections.Counter(len(r["parts"]) for r in recipes)
    print(kinds, augs, textures, cutters, counts)
    assert set(kinds) == set(P.PRIMITIVES) and min(kinds.values()) >= 0.5 * len(parts) / len(P.PRIMITIVES)
    assert set(augs) == set(P.AUGMENTATIONS) and min(augs.values()) >= 0.05 * len(parts)
    assert set(textures) == set(P.TEXTURES) and set(cutters) == set(P.CUTTERS)
    assert set(counts) == set(range(1, P.MAX_PARTS + 1))  # 1 to 9 primitives, as LRM-Zero composes them
    scales = np.array([p["scale"] for p in parts])
    assert scales.min() < 0.2 and scales.max() > 0.85 and scales.std() > 0.15
    # objects differ in shape, not only in parts: their bounding boxes' aspect ratios spread
    extents = np.array([P.recipe_mesh(r).extents for r in recipes[:40]])
    aspect = extents.min(1) / extents.max(1)
    assert aspect.min() < 0.55 and aspect.max() > 0.9  # flat and elongated objects as well as compact ones


def test_textures_are_what_their_kind_says():
    red, blue = [255, 0, 0], [0, 0, 255]
    checker = np.asarray(P.texture_image({"kind": "checker", "colours": [red, blue], "cells": 4}))
    assert {tuple(c) for c in checker.reshape(-1, 3)} == {(255, 0, 0), (0, 0, 255)}
    assert (checker[0, 0] != checker[0, 16]).any() and (checker[0, 0] == checker[16, 16]).all()
    grad = np.asarray(P.texture_image({"kind": "gradient", "colours": [red, blue], "angle": 0.0}))
    assert np.all(np.diff(grad[8, :, 2].astype(int)) >= 0) and grad[8, 0, 2] < 10 and grad[8, -1, 2] > 245
    stripes = np.asarray(P.texture_image({"kind": "stripes", "colours": [red, blue], "frequency": 4.0, "angle": 0.0,
                                          "duty": 0.5}))
    assert (stripes[:, 5] == stripes[0, 5]).all()  # stripes across x are constant along y
    assert len({tuple(c) for c in stripes[0]}) == 2
    noise = np.asarray(P.texture_image({"kind": "noise", "colours": [[0, 0, 0], [255, 255, 255]], "cells": 4,
                                        "octaves": 2, "noise_seed": 1}))
    assert noise.std() > 20 and len(np.unique(noise[..., 0])) > 50
    with pytest.raises(ValueError, match="unknown procedural texture kind 'plaid'"):
        P.texture_image({"kind": "plaid", "colours": [red, blue]})


@pytest.mark.parametrize("kind", P.PRIMITIVES)
def test_primitives_are_closed_and_wound_outward(kind):
    verts, faces, uv = P._merge(P.primitive_patches(kind))
    mesh = trimesh.Trimesh(verts, faces)  # merges the seam vertices
    expected = {"box": 1.0, "sphere": np.pi / 6, "cylinder": np.pi / 4, "cone": np.pi / 12,
                "torus": 2 * np.pi**2 * P.TORUS_MAJOR * P.TORUS_MINOR**2,
                "capsule": np.pi * 0.25**2 * 0.5 + 4 / 3 * np.pi * 0.25**3}[kind]
    assert mesh.volume == pytest.approx(expected, rel=0.06)  # positive: the faces point outward
    assert uv.shape == (len(verts), 2) and uv.min() >= 0 and uv.max() <= 1


@pytest.mark.parametrize("kind", P.PRIMITIVES)
def test_a_boolean_difference_removes_the_cutter_from_the_part(kind):
    cut = {"cutter": "sphere", "centre": [0.3, 0.0, -0.15], "scale": [0.5, 0.5, 0.5], "rotation": [1.0, 0, 0, 0]}
    verts, faces, uv = P.boolean_difference(kind, cut)
    mesh = trimesh.Trimesh(verts, faces)
    full = trimesh.Trimesh(*P._merge(P.primitive_patches(kind))[:2])
    assert 0 < mesh.volume < 0.95 * full.volume  # outward, and smaller
    inside_cutter = np.linalg.norm(verts - cut["centre"], axis=1) < 0.25 - 0.03
    assert not inside_cutter.any()  # no surface is left inside the cutter (one grid cell of slack)
    assert uv.shape == (len(verts), 2)
    with pytest.raises(ValueError, match="left nothing"):
        P.boolean_difference("sphere", {**cut, "centre": [0, 0, 0], "scale": [2.0, 2.0, 2.0]})


def test_a_height_field_displaces_the_surface_and_a_wireframe_is_thin_tubes_along_edges():
    part = {"kind": "sphere", "scale": [1.0, 1.0, 1.0], "rotation": [1.0, 0, 0, 0], "translation": [0.0, 0, 0]}
    plain, _, _ = P.part_mesh(part)
    hf = {"amplitude": 0.08, "directions": [[1.0, 0, 0], [0, 0.6, 0.8]], "frequencies": [6.0, 9.0],
          "phases": [0.0, 1.0]}
    bumpy, _, _ = P.part_mesh({**part, "height_field": hf})
    radii = np.linalg.norm(bumpy, axis=1)
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 0.5, atol=1e-6)
    assert radii.min() < 0.46 and radii.max() > 0.54 and np.abs(radii - 0.5).max() <= 0.08 + 1e-6
    box = {**part, "kind": "box", "scale": [0.8, 0.4, 0.2], "wireframe": {"radius": 0.02}}
    verts, faces, _ = P.part_mesh(box)
    assert len(faces) == 12 * 6 * 4  # 12 edges, 6-sided capped tubes
    corners = np.abs(verts) - np.array([0.4, 0.2, 0.1])  # every vertex within the radius of a box edge
    near_edge = np.sort(np.abs(corners), axis=1)[:, :2].max(1)
    assert near_edge.max() <= 0.02 + 1e-6


def test_recipes_from_another_generator_or_version_are_refused():
    recipe = P.make_recipe(0, 0)
    with pytest.raises(ValueError, match="version 99"):
        P.build_glb({**recipe, "version": 99})
    with pytest.raises(ValueError, match="non-negative integers"):
        P.make_recipe(-1, 0)


def test_the_source_lists_ids_and_generates_each_glb_when_fetched(tmp_path):
    source = P.ProceduralSource(5, 2, str(tmp_path / "_assets"))
    assets = source.assets()
    assert [a.uid for a in assets] == [f"procedural-2-{i:06d}" for i in range(5)]
    assert all(a.path is None and a.source == "procedural" and a.licence == "cc0" for a in assets)
    assert not (tmp_path / "_assets").exists()  # nothing is generated before the farm fetches it
    fetched = source.fetch(assets[1:3])
    assert sorted(p.name for p in (tmp_path / "_assets").iterdir()) == ["procedural-2-000001.glb",
                                                                        "procedural-2-000002.glb"]
    for a in fetched:
        meta = a.metadata
        assert meta["recipe"] == P.make_recipe(2, meta["index"]) and meta["seed"] == 2
        assert meta["generator_version"] == P.GENERATOR_VERSION and meta["relpath"] == f"{a.uid}.glb"
        assert a.sha256() == _sha(P.build_glb(meta["recipe"]))
        assert len(P.load_glb_bytes(open(a.path, "rb").read()).faces) > 0
    # a SLURM array task's slice is a function of the ids alone: two tasks split the objects without overlap
    ids = [a.uid for a in P.ProceduralSource(40, 2, str(tmp_path)).assets()]
    halves = [task_slice(ids, t, 2) for t in (0, 1)]
    assert sorted(halves[0] + halves[1]) == ids and halves[0] and halves[1]


def test_bad_counts_and_seeds_are_user_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="--count 0"):
        P.ProceduralSource(0, 0, str(tmp_path))
    assert main(["procedural", "--count", "2", "--seed", "-3", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lift3d-render procedural: error: --seed -3" in err and "non-negative" in err


def test_the_cli_parses_the_procedural_command():
    a = build_parser().parse_args(["procedural", "--count", "100", "--seed", "7", "--out", "o", "--rig", "eval24",
                                   "--resolution", "64", "--render-seed", "3", "--num-workers", "2"])
    assert (a.command, a.count, a.seed, a.render_seed, a.rig, a.resolution, a.num_workers) == \
        ("procedural", 100, 7, 3, "eval24", 64, 2)
    assert build_parser().parse_args(["objaverse", "--glb-dir", "d", "--out", "o", "--seed", "5"]).render_seed == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["procedural", "--out", "o"])  # --count is required
