"""The generalisation benchmark's bookkeeping (benchmarks/generalization.py): groups, means and ratios. The whole
benchmark runs at its smallest sizes in tests/integration/test_benchmark_generalization.py."""

import argparse

import pytest

from benchmarks.generalization import group_of, ratio, summarise

ARGS = argparse.Namespace(held_out_seed=1)


def test_held_out_objects_are_grouped_by_the_held_out_seed():
    assert group_of("procedural-1-000003", ARGS) == "procedural"
    assert group_of("procedural-10-000003", ARGS) == "zoo"  # another seed's prefix is not this one's
    assert group_of("textured_box", ARGS) == "zoo"


def test_an_object_without_a_surface_counts_as_f_score_zero_not_as_missing():
    records = [{"key": "procedural-1-000000", "psnr": 14.0, "chamfer": 0.2, "fscore@0.1": 0.4},
               {"key": "procedural-1-000001", "psnr": 12.0, "chamfer": None, "fscore@0.1": None},
               {"key": "textured_box", "psnr": 16.0, "chamfer": 0.1, "fscore@0.1": 0.8}]
    out = summarise(records, ARGS)
    assert out["overall"] == {"objects": 3, "no_surface": 1, "psnr": pytest.approx(14.0),
                              "fscore@0.1": pytest.approx(0.4), "chamfer": pytest.approx(0.15)}
    assert out["procedural"]["fscore@0.1"] == pytest.approx(0.2) and out["procedural"]["no_surface"] == 1
    assert out["zoo"]["objects"] == 1 and out["zoo"]["chamfer"] == pytest.approx(0.1)
    assert "zoo" not in summarise(records[:2], ARGS)


def test_a_ratio_to_a_zero_baseline_is_none():
    assert ratio(0.3, 0.2) == pytest.approx(1.5)
    assert ratio(0.3, 0.0) is None and ratio(None, 0.2) is None
