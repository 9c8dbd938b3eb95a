"""The benchmark suites, on top of the stages: one module per suite (``ctssl bench SUITE``)."""
