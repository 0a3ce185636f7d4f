"""Data: built-in example systems, trajectories (MDAnalysis), CG mappings, datasets."""
