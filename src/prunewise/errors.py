"""The one exception type for bad user input (the CLI maps it to exit code 2)."""


class PrunewiseError(ValueError):
    """Bad input: an unknown name, an out-of-range value, a missing or corrupt file.

    The message names the bad value and what is allowed; it is shown to the user as one line.
    """
