"""Evaluation of pretrained backbones, in layers (each imports only those above it in this list; docs/architecture.md):

- ``measures``: arrays in, numbers out (kNN, linear probe, classification metrics and bootstrap CIs, agreement,
  representation similarity, domain gap, confounder statistics, segmentation: Dice, HD95, NSD);
- ``inputs``: downstream datasets, backbone sources, how each backbone sees an image, label fractions and folds
  by patient, synthetic confounders, segmentation cases;
- ``features``: frozen features extracted in batches by loader workers, cached on disk; layer activations;
- ``records``: the run store, provenance, comparisons between backbones, figures;
- ``protocols``: one callable per protocol, from a spec and its settings to run records (``run_knn``, ...);
- ``sweep``: tasks x backbones x fractions x seeds as independent jobs, one task registry; ``recipes/``: the
  seed studies;
- ``report``: sections built once, rendered to HTML and Markdown;
- ``commands``: the command lines (``ctssl knn``, ``probe``, ``finetune``, ``extract``, ``similarity``, ``gap``,
  ``confounders``, ``segment``, ``report``, ``sweep``).
"""
