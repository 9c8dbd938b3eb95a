"""The ``ctssl`` command line (``main``, routing to each stage's command module; ``bench_command`` for the suite
in ``ctssl.bench``) and the demo: the top layer, which imports the stages; nothing imports it."""
