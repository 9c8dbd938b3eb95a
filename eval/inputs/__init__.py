"""Inputs: downstream datasets, backbone sources, how each backbone sees an image, patient-grouped folds."""
