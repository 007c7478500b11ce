"""Errors that users see: each names the file, key or frame at fault."""


class FlowsciError(Exception):
    """Base class for errors caused by user input (config, data files)."""


class ConfigError(FlowsciError):
    """The configuration violates the schema or is internally inconsistent."""


class DataError(FlowsciError):
    """An input or intermediate data file is missing, malformed or inconsistent."""


class ResourceError(FlowsciError):
    """The machine ran out of memory (or another resource); the message says what to change."""


class BusyError(FlowsciError):
    """Another process holds the lock on the output this command would write."""
