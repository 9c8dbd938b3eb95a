"""Shared fixtures: one small synthetic corpus per test session."""

from __future__ import annotations

import pytest

from data.synth import NaturalConfig, SynthConfig, run_synth

# Eight studies cover the whole fixed catalogue of quirks (data.synth_study.CATALOGUE).
SMALL = dict(patients=8, seed=7, matrix=96, thickness_mm=[3.0, 5.0],
             natural=NaturalConfig(classes=4, train_per_class=4, val_per_class=2, size=32))


def small_config(out, **changes) -> SynthConfig:
    settings = {**SMALL, **changes}
    return SynthConfig(out=str(out), **settings)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(config, summary) of a small corpus generated once for the session."""
    cfg = small_config(tmp_path_factory.mktemp("synth") / "corpus")
    summary = run_synth(cfg)
    return cfg, summary


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (see tests/slurm_cluster.py), started once."""
    import os

    from tests.slurm_cluster import SlurmCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        message = f"SLURM is not installed (missing {', '.join(missing)}); .ci/run installs slurm-wlm and munge"
        if os.environ.get("CTSSL_REQUIRE_SLURM"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()
