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


class ESLCommandTimeout(ESLDisconnected):
    """A command's reply did not come in time, so we dropped the connection.

    FreeSWITCH answers one socket's commands strictly in order (an `api` blocks its
    listener until it returns), so every later command waits behind a hung one, and
    the keep-alive probe with them. Dropping the link is the only way to get a socket
    that answers again; the command may or may not have run on the switch.
    """

    def __init__(self, command: str, timeout: float) -> None:
        super().__init__(
            f"{command!r}: no reply within {timeout:g} s; connection dropped "
            "(FreeSWITCH answers in order: every later command was stuck behind it)"
        )
        self.command = command
        self.timeout = timeout


class ESLAuthError(ESLError):
    """FreeSWITCH refused to let us in: a wrong password (`-ERR invalid`), or its ACL.

    Retrying at full speed cannot help: an operator has to change a configuration,
    so the inbound client logs it as an error and retries slowly.
    """


class ESLAccessDenied(ESLAuthError):
    """FreeSWITCH's ACL (`apply-inbound-acl` in event_socket.conf.xml) refused our address.

    It answers such a connection with `text/rude-rejection` before any auth/request
    and closes it, so no password was even tried.
    """


class ESLJobTimeout(ESLError):
    """A bgapi job's result (its BACKGROUND_JOB event) did not come in time.

    The job may still be running on the switch (an originate may still ring): the
    caller decides what to clean up.
    """

    def __init__(self, command: str, job_uuid: str, timeout: float) -> None:
        super().__init__(f"bgapi {command!r}: no result for job {job_uuid} within {timeout:g} s")
        self.command = command
        self.job_uuid = job_uuid
        self.timeout = timeout


class ESLCommandError(ESLError):
    """FreeSWITCH answered a command with -ERR (a command/reply or an api/response)."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"{command!r} failed: {reply}")
        self.command = command
        self.reply = reply


class ESLReplyTooLarge(ESLCommandError):
    """The reply's body was over the connection's size limit: read, discarded, refused.

    Only this command fails; the link stays up (the body was skipped byte for byte, so
    framing and reply order are intact). A `show channels` on a very busy switch can
    get there: ask for less (`show channels count`, `show calls like ...`).
    """

    def __init__(self, command: str, size: int, limit: int) -> None:
        super().__init__(command, f"reply of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class CallHungUp(ESLError):
    """The call leg is gone: no further application can run on it."""

    def __init__(self, uuid: str, cause: str | None) -> None:
        super().__init__(f"call {uuid} hung up ({cause or 'unknown cause'})")
        self.uuid = uuid
        self.cause = cause


class CallLost(CallHungUp):
    """FreeSWITCH stopped answering on this call's socket, so we dropped it.

    For the call's flow it is a hang-up (the call is out of our hands, and FreeSWITCH
    hangs up a channel whose socket closes, unless told to `resume`); unlike a plain
    hang-up, the command that timed out may still have run, so it must not be
    retried elsewhere.
    """

    def __init__(self, uuid: str, reason: str) -> None:
        ESLError.__init__(self, f"call {uuid} lost: {reason}")
        self.uuid = uuid
        self.cause = reason
