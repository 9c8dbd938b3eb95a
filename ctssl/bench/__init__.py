"""The benchmark suite (``ctssl bench``), on top of the stages it measures; each figure beside a baseline
measured in the same run."""
