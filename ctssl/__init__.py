"""ctssl: self-supervised pretraining and evaluation for CT corpora.

The stages live in the top-level packages ``data``, ``shards``, ``pretrain``, ``finetune`` and
``eval``; this package holds only what every stage shares: the ``ctssl`` command line, the
configuration convention, logging and atomic file writing.
"""

__version__ = "0.1.0"
