"""Errors the CLI turns into a one-line message and an exit code."""


class UserError(Exception):
    """Bad input or an unreachable dependency: the message says what and where."""

    exit_code = 2
