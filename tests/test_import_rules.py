"""The one boundary import-linter cannot see: only mixsweep/slurm.py runs SLURM's commands.

(The import rules themselves, layers, no cycles, ray only in tune/ray_access and wandb only
in tracking, are pyproject's [tool.importlinter] contracts: `lint-imports` in CI.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import mixsweep

SLURM_COMMANDS = {"sbatch", "squeue", "scancel", "sacct", "scontrol", "srun", "sinfo"}


def slurm_commands(source: str) -> list[tuple[int, str]]:
    """(line, command) of each string constant that names a SLURM command, alone or as the
    first word of a command line (prose that merely mentions sbatch is not one)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = node.value.split(maxsplit=1)
            if words and words[0] in SLURM_COMMANDS and (len(words) == 1 or "\n" not in node.value):
                found.append((node.lineno, words[0]))
    return sorted(found)


def test_the_check_finds_a_slurm_command() -> None:
    src = 'import subprocess\nsubprocess.run(["squeue", "-j", "1"])\nos.system("scancel 3")\n'
    assert slurm_commands(src) == [(2, "squeue"), (3, "scancel")]
    assert slurm_commands('"""Submits with sbatch."""\nx = "the sbatch script"\n') == []


def test_only_slurm_py_runs_slurm_commands() -> None:
    root = Path(mixsweep.__file__).parent
    offenders = {str(p.relative_to(root)): hits for p in sorted(root.rglob("*.py"))
                 if p.name != "slurm.py" and (hits := slurm_commands(p.read_text()))}
    assert offenders == {}
    assert slurm_commands((root / "slurm.py").read_text())  # the check does see slurm.py's
