"""Shared fixtures: one small synthetic corpus per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctssl.data.ingest import IngestConfig, run_ingest
from ctssl.data.pseudonym import fixed_salt
from ctssl.shards.from_images import images_to_shards

from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth

TEST_SALT = "pretrain-test-salt-0123456789"   # the session's shards, whatever an earlier test set

# Eight studies cover the whole fixed catalogue of quirks (data.synth_study.CATALOGUE).
SMALL = dict(patients=8, seed=7, matrix=96, thickness_mm=[3.0, 5.0],
             natural=NaturalConfig(classes=4, train_per_class=4, val_per_class=2, size=32))


def small_config(out, **changes) -> SynthConfig:
    settings = {**SMALL, **changes}
    return SynthConfig(out=str(out), **settings)


def pytest_collection_modifyitems(config, items):
    """Every test in tests/integration/ and every test on the real SLURM is an ``integration`` test, so the
    developer's fast lane (``pytest -m "not slow and not integration"``) leaves them out."""
    integration = Path(__file__).parent / "integration"
    for item in items:
        if integration in Path(str(item.fspath)).parents or "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(config, summary) of a small corpus generated once for the session."""
    cfg = small_config(tmp_path_factory.mktemp("synth") / "corpus")
    summary = run_synth(cfg)
    return cfg, summary


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (see tests/slurm_cluster.py), started once."""

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


@pytest.fixture(scope="session")
def ct_shards(corpus, tmp_path_factory):
    cfg, _ = corpus
    out = tmp_path_factory.mktemp("pretrain") / "ct"
    # Small shards of very different sizes: ranks and workers see uneven shard sets.
    with fixed_salt(TEST_SALT):
        run_ingest(IngestConfig(sources=[cfg.out], out=str(out), image_size=48, shard_size_mb=0.1,
                                labels=[str(Path(cfg.out) / "labels" / "slices.csv")]))
    return out


@pytest.fixture(scope="session")
def natural_shards(corpus, tmp_path_factory):
    cfg, _ = corpus
    out = tmp_path_factory.mktemp("pretrain") / "natural"
    images_to_shards(Path(cfg.out) / "natural-standin", out, shard_size_mb=0.01)
    return out


@pytest.fixture(scope="session")
def eval_shards(corpus, tmp_path_factory):
    """Labelled CT shards for the evaluation tests: 4 / 2 / 2 patients in train / val / test,
    so that the held-out splits hold more than one patient and more than one region."""
    from ctssl.data.ingest import SplitFractions

    cfg, _ = corpus
    out = tmp_path_factory.mktemp("eval") / "ct"
    with fixed_salt(TEST_SALT):    # the salt decides which patients land in val and test
        run_ingest(IngestConfig(sources=[cfg.out], out=str(out), image_size=32, splits=SplitFractions(0.5, 0.25, 0.25),
                                labels=[str(Path(cfg.out) / "labels" / "slices.csv")]))
    return out


@pytest.fixture(scope="session")
def unlabelled_shards(corpus, tmp_path_factory):
    """The session corpus ingested as a user's own data usually is: without --labels (images only)."""
    from ctssl.data.ingest import SplitFractions

    cfg, _ = corpus
    out = tmp_path_factory.mktemp("own") / "ct"
    with fixed_salt(TEST_SALT):    # the same patients per split as eval_shards
        run_ingest(IngestConfig(sources=[cfg.out], out=str(out), image_size=32, splits=SplitFractions(0.5, 0.25, 0.25)))
    return out


@pytest.fixture(scope="session")
def corpora(tmp_path_factory):
    """50 series x 100 slices, 10 series per shard, series in slice order (as ingest writes), and the
    same after ctssl shards shuffle."""
    from ctssl.pretrain.batch_stats import series_ordered_corpus
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    root = tmp_path_factory.mktemp("batches")
    ordered = series_ordered_corpus(root / "ordered", series=50, slices=100, series_per_shard=10, size=8)
    shuffled = root / "shuffled"
    run_shuffle(ordered, shuffled, ShuffleConfig(shard_size_mb=0.5, bucket_mb=2.0), workers=2)
    return ordered, shuffled


@pytest.fixture(scope="session")
def reference(ct_shards, tmp_path_factory):
    """(dataset, {split: features}) of the CT shards under random:resnet18:3 at 32 px, extracted in this process
    (what the extraction paths are compared with)."""
    import numpy as np

    from ctssl.eval.features.cache import cached_features
    from ctssl.eval.inputs.datasets import open_dataset

    data = open_dataset(str(ct_shards), "region")
    feats = cached_features("random:resnet18:3", data, ["train", "test"], 32, tmp_path_factory.mktemp("ref"),
                            workers=0)
    return data, {s: np.asarray(f.features) for s, f in feats.items()}
