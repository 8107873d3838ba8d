"""mixsweep: large mixup sweeps on Ray Tune + SLURM, measuring per-layer linearity."""

__version__ = "0.2.0"
