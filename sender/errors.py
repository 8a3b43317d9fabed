"""Errors the CLI turns into a one-line message, and the exit codes every command uses."""

from enum import IntEnum


class ExitCode(IntEnum):
    """What a scheduler can act on (README, "Exit codes")."""

    OK = 0
    UNEXPECTED = 1  # a bug: a traceback is printed
    BAD_INPUT = 2  # bad arguments or declarations, unreachable database, unusable files
    VALIDATION = 3  # push copy does not render
    SAFEGUARD = 4  # inactive campaign, audience over the maximum
    LOCKED = 5  # another sender holds the campaign
    PARTIAL = 6  # some messages failed, have an unknown outcome, or did not render
    SYSTEMIC = 7  # FCM refuses the sender itself (credentials, project, unreachable): run stopped, nothing lost
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM (a scheduler's timeout)


class UserError(Exception):
    """Bad input or an unreachable dependency: the message says what and where."""

    exit_code = ExitCode.BAD_INPUT
