"""Errors of the event-socket layer, one class per thing a caller can act on.

Callers distinguish "the switch said no" (ESLCommandError: a bad argument, an unknown
uuid) from "the link is gone" (ESLDisconnected: retry later, the call may be over)
from "the peer is not speaking ESL" (ESLProtocolError: the connection is closed).
"""

from __future__ import annotations


class ESLError(Exception):
    """Base of every event-socket error."""


class ESLProtocolError(ESLError):
    """The peer sent bytes that are not valid ESL framing; that connection is closed."""


class ESLDisconnected(ESLError):
    """The connection closed while a command was waiting for its reply or job result."""


class ESLAuthError(ESLError):
    """FreeSWITCH refused our password (or its ACL rejected us)."""


class ESLCommandError(ESLError):
    """FreeSWITCH answered a command with -ERR (a command/reply or an api/response)."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"{command!r} failed: {reply}")
        self.command = command
        self.reply = reply


class CallHungUp(ESLError):
    """The call leg is gone: no further application can run on it."""

    def __init__(self, uuid: str, cause: str | None) -> None:
        super().__init__(f"call {uuid} hung up ({cause or 'unknown cause'})")
        self.uuid = uuid
        self.cause = cause
