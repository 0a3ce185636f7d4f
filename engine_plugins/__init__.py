"""engine_plugins: learned generative models for MD, exported to TorchScript, run inside OpenMM and LAMMPS.

Flow of the package (one direction): data -> nn/methods (models) -> export (artifact) -> engines.
"""

__version__ = "0.1.0"

#: Prefix of every LAMMPS style this project defines (``pair_style ep/torch``, ``fix ep/...``).
LAMMPS_STYLE_PREFIX = "ep"
