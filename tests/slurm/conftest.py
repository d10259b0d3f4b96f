"""The real one-node SLURM cluster the tests in this folder submit jobs to (one per test session)."""

from __future__ import annotations

import os

import pytest

from tests.slurm.cluster import LocalSlurmCluster, SlurmUnavailable

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster():
    try:
        with LocalSlurmCluster(cpus=4) as cluster:
            yield cluster
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
