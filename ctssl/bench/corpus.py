"""The benchmarks' CT shards: 8 synthetic chest and abdomen studies at 256x256, one series per shard (so that
loader workers have shards to share), generated once and cached in the work folder (``loader``, ``extract``)."""

from __future__ import annotations

from pathlib import Path

from ctssl.data.pseudonym import fixed_salt

BENCH_SALT = "benchmark-salt-not-secret-0123"   # synthetic patients only


def bench_shards(out: Path) -> Path:
    """The shard folder under ``out``, generated when missing."""
    shards = Path(out) / "bench-shards-v3"      # v3: CTHU v2 with checksums, region labels joined, 8 shards
    if (shards / "manifest.json").exists():
        return shards
    from ctssl.data.ingest import IngestConfig, SplitFractions, run_ingest
    from ctssl.data.synth import NaturalConfig, SynthConfig, run_synth

    corpus = Path(out) / "bench-corpus-8"
    run_synth(SynthConfig(out=str(corpus), patients=8, seed=1, natural=NaturalConfig(enabled=False),
                          contact_sheet=False))
    with fixed_salt(BENCH_SALT):
        run_ingest(IngestConfig(sources=[str(corpus)], out=str(shards), image_size=256, shard_size_mb=1.0,
                                labels=[str(corpus / "labels" / "slices.csv")], splits=SplitFractions(1.0, 0.0, 0.0)))
    return shards
