"""The phone line's connection to FreeSWITCH: inbound client, outbound server, switch.

`EslLine` is built with the settings (nothing connects yet) and started by the
app's cleanup context. The inbound client keeps retrying while no FreeSWITCH
answers, and an outbound port that is taken is retried too: the service stays up
and serves everything else meanwhile, and `status()` says what is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hotline.acd.esl_switch import EslSwitch
from hotline.settings import Settings
from hotline.telephony.esl_inbound import InboundESL
from hotline.telephony.esl_outbound import CallHandler, CallLeg, OutboundServer

log = logging.getLogger(__name__)


class EslLine:
    def __init__(self, settings: Settings, *, listen_retry_s: float = 5.0) -> None:
        host, port = settings.esl_listen_address
        self.inbound = InboundESL(settings.esl_host, settings.esl_port, settings.esl_password)
        self._handler: CallHandler | None = None
        self.server = OutboundServer(self._call, host, port)
        self.switch = EslSwitch(self.inbound, self.server.legs)
        self.listen_retry_s = listen_retry_s
        self.listening = False
        self._listener: asyncio.Task[None] | None = None

    def attach(self, handler: CallHandler) -> None:
        """The per-call handler (built after the ACD, which needs this line's switch)."""
        self._handler = handler

    async def _call(self, leg: CallLeg) -> None:
        if self._handler is None:  # cannot happen once wired; never leave a caller hanging
            await leg.hangup("NORMAL_TEMPORARY_FAILURE")
            return
        await self._handler(leg)

    async def start(self) -> None:
        await self.switch.start()
        await self.inbound.start()
        self._listener = asyncio.create_task(self._listen(), name="esl-outbound-listen")
        with contextlib.suppress(TimeoutError):  # usually immediate; never block start-up
            await asyncio.wait_for(asyncio.shield(self._listener), 1.0)

    async def wait_listening(self) -> None:
        """Until the outbound server is bound (the simulator needs its port)."""
        if self._listener is not None:
            await asyncio.shield(self._listener)

    async def _listen(self) -> None:
        while True:
            try:
                await self.server.start()
            except OSError as exc:
                log.error(
                    "cannot listen for FreeSWITCH on %s:%s (%s); retrying in %.0f s",
                    self.server.host,
                    self.server.port,
                    exc,
                    self.listen_retry_s,
                )
                await asyncio.sleep(self.listen_retry_s)
                continue
            self.listening = True
            return

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.server.stop()
        await self.switch.close()
        await self.inbound.stop()

    def status(self) -> dict[str, Any]:
        return {
            # connected | connecting | access_denied | auth_failed (the last two need
            # an operator: FreeSWITCH's ACL or our password; inbound_error says which)
            "inbound": self.inbound.state,
            "inbound_error": self.inbound.last_error,
            "outbound": f"{self.server.host}:{self.server.port}" if self.listening else None,
            "calls": self.server.active_calls,
            # answers that never came or came too late: each of the first two dropped a
            # socket (the inbound link, reconnected; a call's), see esl_connection
            "inbound_commands_timed_out": self.inbound.commands_timed_out,
            "calls_lost_to_timeouts": self.server.calls_lost,
            "bgapi_jobs_timed_out": self.inbound.jobs_timed_out,
            "late_job_results": self.inbound.late_job_results,
        }
