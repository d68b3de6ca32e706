"""Errors shared by every module."""


class XecError(Exception):
    """An error the user can fix (bad input, bad config, bad file). The CLI prints it as one
    line naming the file and the problem, and exits with code 2."""


class InputFileError(XecError):
    """An input ROOT file itself is bad (missing, unreadable, truncated, no such tree or branch,
    wrong shapes). ``path`` names it: the per-file jobs of a run period record such a failure
    (xec.scatter) so that the merge lists the file instead of failing the whole run."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = str(path)

    def __reduce__(self):
        # a worker process (xec shards --workers N) sends it back pickled; the default
        # reduction would call __init__ with the message alone and break the process pool
        return type(self), (self.path, str(self))
