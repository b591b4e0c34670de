"""Errors a user can act on: each prints as one line naming the file or key at fault."""


class TinyM2NetError(Exception):
    """Base class: the stage prints `error: <message>` and exits 1, leaving no partial output."""


class ParamsError(TinyM2NetError):
    """A params.yaml key is missing or holds a value the pipeline cannot use."""


class DataError(TinyM2NetError):
    """An input file is missing, empty, corrupt or lacks what the stage needs."""


class ModelFileError(TinyM2NetError):
    """A model or artifact file cannot be read."""
