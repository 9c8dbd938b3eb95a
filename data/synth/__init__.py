"""The embedded synthetic CT corpus (``ctssl synth``), apart from the real ingest: a parametric HU phantom
(``phantom``), studies and their labels (``study``), written through the real file formats (``dicom``,
``nifti``), a natural-image stand-in (``dead_leaves``), the run (``corpus``) and its command."""

from ctssl.data.synth.corpus import NaturalConfig, SynthConfig, generate_study, make_plan, run_synth

__all__ = ["NaturalConfig", "SynthConfig", "generate_study", "make_plan", "run_synth"]
