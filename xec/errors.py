"""Errors shared by every module."""


class XecError(Exception):
    """An error the user can fix (bad input, bad config, bad file). The CLI prints it as one
    line naming the file and the problem, and exits with code 2."""
