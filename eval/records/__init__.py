"""Records: the run store, provenance and the comparisons between backbones."""
