"""Exceptions the library raises for problems the user can fix (the CLI maps them to exit code 2)."""


class InputError(ValueError):
    """Bad input: missing or corrupt file, wrong dimensionality, non-finite voxels, bad scale, unknown model."""


class CancelledError(RuntimeError):
    """Raised when a cancel hook asked the engine to stop (checked between tiles)."""
