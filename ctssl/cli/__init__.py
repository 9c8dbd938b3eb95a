"""The ``ctssl`` command line (``main``), the demo and the benchmark suite: the top layer, which
imports the stages; nothing imports it."""
