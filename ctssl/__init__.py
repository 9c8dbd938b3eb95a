"""ctssl: self-supervised pretraining and evaluation for CT corpora.

One installed namespace. The stages live in the repository's top-level folders and import as
subpackages of ``ctssl``:

- ``ctssl.data`` (``data/``): CT in Hounsfield units from DICOM/NIfTI, ingest, the synthetic corpus;
- ``ctssl.shards`` (``shards/``): WebDataset shards: writing, reading, verifying, shuffling;
- ``ctssl.pretrain`` (``pretrain/``): SimCLR and DINO (``accelerate launch pretrain/main.py``);
- ``ctssl.finetune`` (``finetune/``): fine-tuning, full or truncated;
- ``ctssl.eval`` (``eval/``): kNN, linear probe, similarity, domain gap, confounders, reports.

Dependencies point one way: ``ctssl.core`` (configuration, logging, atomic writes, machine
description) imports no stage; the stages import ``ctssl.core`` and each other's building blocks
(ingest writes with ``ctssl.shards``, evaluation reads backbones with ``ctssl.pretrain``), never
``ctssl.cli``; ``ctssl.cli`` (the ``ctssl`` command, the demo, the benchmark suite) sits on top
(tests/test_packaging.py checks both rules).
"""

__version__ = "0.2.0"
