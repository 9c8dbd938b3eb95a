"""Sweeps: evaluation tasks x backbones x fractions x seeds as independent jobs; the seed-study recipes."""
