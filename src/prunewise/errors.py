"""The one exception type for bad user input (the CLI maps it to exit code 2)."""


class PrunewiseError(ValueError):
    """Bad input: an unknown name, an out-of-range value, a missing or corrupt file.

    The message names the bad value and what is allowed; it is shown to the user as one line.
    """


class BelowFloor(PrunewiseError):
    """A channel budget below what the floors (min channels, whole heads, equal parts,
    round_to) allow; ``floor``: the smallest cost they allow, as a fraction of the original."""

    def __init__(self, message: str, floor: float):
        super().__init__(message)
        self.floor = floor


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed (CPU or accelerator): the job asked for more
    memory than the machine (or the process's limit) gives, which the command line reports as
    one line rather than as a bug."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text
                                            or "out of memory" in text.lower())
