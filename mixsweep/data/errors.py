"""The data error, apart from the readers so that the command line imports it without torch."""


class DataError(RuntimeError):
    """A dataset cannot be read (missing files, wrong format)."""
