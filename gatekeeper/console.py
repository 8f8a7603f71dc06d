"""What the ``gatekeeper`` and ``gatekeeper-loader`` commands print when an expected failure ends them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import redis

# The status a shell reports for a writer killed by SIGPIPE (128 + 13), as for `yes` in `yes | head -1`.
CLOSED_PIPE_EXIT = 141

# What a command prints for these is "cannot reach Redis at URL: why": the server is down, the
# address or port is wrong, or it did not answer in time.
REDIS_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException)
# And "Redis at URL refused: what it said" for these: it answers, but will not take the
# command now (out of memory under noeviction, a read-only replica, an ACL, or, MISCONF, a
# failed background save), which the operator must put right.
REDIS_REFUSALS = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError, redis.exceptions.NoPermissionError)


def refused_by_redis(error: Exception) -> bool:
    """True for an answer of Redis's saying it will not take a command in its present state."""
    return isinstance(error, REDIS_REFUSALS) or (
        isinstance(error, redis.ResponseError) and str(error).startswith("MISCONF")
    )


class CommandFailed(Exception):
    """An expected failure: the entry point prints ``<command>: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def redis_unreachable(where: str, error: Exception) -> str:
    """One line for a Redis connection that failed: ``where`` (its URL as shown, password
    hidden, and where it came from), and the operating system's reason if there is one."""
    cause = error.__cause__ or error.__context__
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(error)
    return f"cannot reach Redis at {where}: {reason}"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a driver's may run to several), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def file_error(error: OSError) -> str:
    """``PATH: reason`` for an error reading or writing a named file."""
    return f"{error.filename}: {error.strerror}"


def run_command(
    command: str,
    run: Callable[[], int],
    redis_where: Callable[[], str],
    describe: Callable[[Exception], str | None] = lambda error: None,
) -> int:
    """Run one command of an entry point and return its exit status. An expected failure is
    one line ``COMMAND: what`` on stderr, never a traceback: CommandFailed, Redis unreachable
    or refusing the command (at ``redis_where()``, the URL as shown), and whatever
    ``describe`` puts into words; any other error is a bug and keeps its traceback. A closed
    stdout ends the command quietly."""
    try:
        code = run()
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
    except BrokenPipeError:  # stdout's reader went away (… | head): nobody is left to tell
        exit_on_closed_pipe()
    except CommandFailed as error:
        print(f"{command}: {error}", file=sys.stderr)
        return error.exit_code
    except REDIS_UNREACHABLE as error:
        print(f"{command}: {redis_unreachable(redis_where(), error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        message = (
            f"Redis at {redis_where()} refused: {first_line(error)}" if refused_by_redis(error) else describe(error)
        )
        if message is None:
            raise
        print(f"{command}: {message}", file=sys.stderr)
        return 1
    return code


def exit_on_closed_pipe() -> NoReturn:
    """End quietly after the reader of stdout went away (``… | head``).

    stdout is pointed at /dev/null first so that the interpreter's last flush of what is still
    buffered does not fail again ("Exception ignored … BrokenPipeError").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(CLOSED_PIPE_EXIT)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of both commands: each option's default shown, except where there is none to
    show (None, off) and the help text says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def global_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *flags: str, top: bool, **options: Any
) -> None:
    """Add an option every subcommand takes, before or after its name (``top``: on the main
    parser). A subcommand's copy has no default, so that it does not undo the same option
    given before the subcommand; given after, it wins."""
    if not top:
        options["default"] = argparse.SUPPRESS
    parser.add_argument(*flags, **options)
