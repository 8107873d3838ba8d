"""mixsweep: large mixup sweeps on Ray Tune + SLURM, measuring per-layer linearity.

The Python API for notebooks and scripts is :mod:`mixsweep.api`.
"""

__version__ = "0.2.0"
