"""Errors the backend raises. Each says, in plain words, what went wrong and what to do.

The CLI maps `UsageError` (and its subclasses) to exit code 2 and everything else derived from
`AgentlogError` to exit code 1; the HTTP port maps them to 400 / 5xx.
"""

from __future__ import annotations


class AgentlogError(Exception):
    """Base class: a failure with a message meant for the user."""


class UsageError(AgentlogError):
    """The caller asked for something invalid (bad argument, bad query, bad config)."""


class ConfigError(UsageError):
    """A setting is invalid. The message names the file (or variable), the key, what was expected
    and what was found."""


class QueryError(UsageError):
    """A query or its parameters are invalid (Loki answers these with 400)."""


class LogQLSyntaxError(QueryError):
    """A LogQL parse error, with the position (1-based line and column) and what was expected."""

    def __init__(self, message: str, *, pos: int, line: int, col: int, expected: str = "") -> None:
        self.pos = pos
        self.line = line
        self.col = col
        self.expected = expected
        self.detail = message
        super().__init__(f"parse error at line {line}, col {col}: {message}")


class LogQLUnsupportedError(QueryError):
    """A valid LogQL construct outside the subset this engine evaluates. Named, never guessed."""

    def __init__(self, construct: str) -> None:
        self.construct = construct
        super().__init__(f"unsupported LogQL: {construct} is not supported by this store")


class StorageError(AgentlogError):
    """The store could not do what was asked (locked, unreadable or full database, ...)."""


class ServiceUnavailable(AgentlogError):
    """A service (Loki, PostgreSQL, Redis, OpenRouter) could not be reached or did not answer."""


class NotFound(AgentlogError):
    """The thing asked for does not exist (a run id, a label)."""


class InvalidTransition(UsageError):
    """A status or triage change that the rules do not allow."""
