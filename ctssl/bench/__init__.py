"""The benchmark suite (``ctssl bench``), on top of the stages it measures: every figure beside a baseline
measured in the same run. One module per suite, each with ``run``, ``format_table`` and ``summary_rows``:

- ``ingest``, ``plan_scale``: ingest rate per core against a naive pydicom pipeline; the SLURM ingest's plan
  and merge at archive scale;
- ``loader``, ``batches``, ``train``: the pretraining loader's CPU cost per sample, what its batches are made
  of, training steps per second;
- ``knn``, ``extract``, ``eval_scale``: FAISS kNN against scikit-learn, feature extraction, kNN over a bank on
  disk projected to 12 million slices;
- ``gpu``: every GPU figure in one call (``ctssl bench gpu``), tiny on a CPU in the test suite;
  ``epochs``: what one epoch reads at the corpus's proportions, simulated (``python -m ctssl.bench.epochs``);
- ``suite``: the registry of suites and ``ctssl bench all``; ``measure`` (timing) and ``corpus`` (the
  benchmarks' CT shards) are shared by the suites.
"""
