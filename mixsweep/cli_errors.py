"""How the command line reports bad input: one ``error:`` line per problem, exit code 2,
no traceback (usage errors, user errors, and the file system's refusals)."""

from __future__ import annotations

import contextlib
import errno
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer._click.core import Context
from typer._click.exceptions import NoArgsIsHelpError  # typer >= 0.29 vendors click
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperGroup

from mixsweep.data import DataError
from mixsweep.slurm import SlurmError
from mixsweep.spec_errors import SpecError
from mixsweep.store import StoreError, SweepLocked

err_console = Console(stderr=True)


@contextlib.contextmanager
def _plain_usage_errors() -> Iterator[None]:
    """A usage error (a bad option value, a missing argument, an unknown verb) as one plain
    ``error:`` line with exit code 2, like every other bad input (not typer's framed box)."""
    try:
        yield
    except NoArgsIsHelpError:
        raise  # a bare verb: typer prints its help
    except ClickUsageError as err:
        where = f" (see: {err.ctx.command_path} --help)" if err.ctx is not None else ""
        err_console.print(f"error: {' '.join(err.format_message().split())}{where}",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


class PlainErrors(TyperGroup):
    def make_context(self, *args: Any, **kwargs: Any) -> Context:
        with _plain_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Context) -> Any:
        with _plain_usage_errors():
            return super().invoke(ctx)


class UsageError(RuntimeError):
    """Bad input from the command line; reported as one line, exit 2."""


USER_ERRORS: tuple[type[BaseException], ...] = (SpecError, DataError, UsageError, SlurmError,
                                                 SweepLocked, StoreError)
_AGAIN = "nothing finished is lost: {fix} and run the same command again"
# the file system refused a write or read: errno -> what to do about it (one line, exit 2)
_FS_ERRORS: dict[int | None, str] = {  # keyed as OSError.errno is typed (None: no code)
    errno.ENOSPC: "free space", errno.EDQUOT: "free space (or raise the quota)",
    errno.EROFS: "choose a writable place", errno.EACCES: "fix the permissions",
    errno.EPERM: "fix the permissions",
    # a path of the wrong kind (a file where a folder is needed, or the reverse), or unusable
    errno.ENOTDIR: "choose another path (or move that file away)",
    errno.EEXIST: "choose another path (or move that file away)",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "fix the symbolic link (it loops)",
}

_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def file_in_the_way(path: Path) -> Path | None:
    """The file that stands where ``path`` needs a folder (``path`` or one of its parents)."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _fs_error_line(err: OSError) -> str:
    """One line for an OSError of _FS_ERRORS: the path, what is wrong, what to do."""
    path = Path(err.filename) if err.filename else None
    what = err.strerror or type(err).__name__
    if path is not None and err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = file_in_the_way(path)
        if blocker is not None:
            what = f"{blocker} is a file, not a folder"
    elif path is not None and err.errno == errno.EISDIR:
        what = "is a folder, not a file"
    where = f"{path}: " if path is not None and not what.startswith(str(path)) else ""
    # disk full, quota, read-only, permissions: the commands meet these when they write
    verb = "cannot write " if err.errno in _WRITE_ERRORS else ""
    return f"error: {verb}{where}{what}; " + _AGAIN.format(fix=_FS_ERRORS[err.errno])


def user_errors(fn):
    """Report bad input as one line per problem on stderr with exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            for line in str(err).splitlines() or [type(err).__name__]:
                err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as err:
            if err.errno not in _FS_ERRORS:
                raise
            err_console.print(_fs_error_line(err), markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def seconds_option(option: str, most: float = 86400.0, zero: bool = True):
    """A typer callback: a number of seconds, 0 (or, without ``zero``, more) to ``most``
    (typer's min= lets nan and inf in)."""

    def check(value: float | None) -> float | None:
        if value is not None and not (0 <= value <= most and (zero or value > 0)):  # nan: False
            least = "0" if zero else "more than 0"
            raise typer.BadParameter(f"{value} is not a number of seconds from {least} to {most:g}",
                                     param_hint=f"'{option}'")
        return value

    return check


