"""Measures: pure functions that take arrays and return numbers (no I/O, no models).

- ``segmentation``: per-case Dice, HD95 and normalised surface Dice in millimetres, the RadNet-12M
  study's slice-pooled Dice (labelled as such), a per-case table and patient-bootstrap CIs.
"""
