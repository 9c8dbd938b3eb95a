"""ctssl.core.pool: a fork pool ends, whatever SIGTERM handler its parent process has.

Before it, a shuffle run after an in-process training run hung in the suite: the pool's workers inherited
the training's SIGTERM handler, and ``with Pool()``'s terminate() waited on them for ever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from ctssl.core.pool import fork_pool
    from ctssl.pretrain.batch_stats import series_ordered_corpus
    from ctssl.shards.shuffle import ShuffleConfig, run_shuffle

    signal.signal(signal.SIGTERM, lambda *_: None)     # as a training run's preemption handler
    root = Path(sys.argv[1])
    ordered = series_ordered_corpus(root / "ordered", series=50, slices=100, series_per_shard=10, size=8)
    for i in range(3):      # with multiprocessing's own `with Pool()`, the first or second run hung
        run_shuffle(ordered, root / f"shuffled-{i}", ShuffleConfig(shard_size_mb=0.5, bucket_mb=2.0), workers=2)
    def fail(x):
        raise RuntimeError("task failed")
    try:
        with fork_pool(2) as pool:
            pool.map(fail, range(4))
    except RuntimeError as err:
        print("failed as expected:", err)
    print("pool ended")
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork pools need os.fork")
def test_shuffle_pools_end_with_a_sigterm_handler_in_the_parent(tmp_path):
    # subprocess.run kills (SIGKILL) at the timeout: a hang fails the test instead of the suite.
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "failed as expected: task failed" in run.stdout and "pool ended" in run.stdout


def test_workers_take_the_default_sigterm_action():
    from ctssl.core.pool import fork_pool

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        with fork_pool(1) as pool:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
