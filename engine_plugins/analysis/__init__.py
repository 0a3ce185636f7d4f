"""Analysis: validity of generated structures, crystal matching, screening metrics, reports.

Submodules import their heavy dependencies (RDKit, pymatgen, MDAnalysis) lazily.
"""
