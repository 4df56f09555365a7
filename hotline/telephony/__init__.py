"""FreeSWITCH event socket: wire format, inbound client, outbound call server, simulator.

The simulator (hotline.telephony.simulator) is imported explicitly by tests and `--demo`.
"""

from hotline.telephony.errors import (
    CallHungUp,
    CallLost,
    ESLAccessDenied,
    ESLAuthError,
    ESLCommandError,
    ESLCommandTimeout,
    ESLDisconnected,
    ESLError,
    ESLJobTimeout,
    ESLProtocolError,
    ESLReplyTooLarge,
)
from hotline.telephony.esl_frames import Event, Frame, FrameParser
from hotline.telephony.esl_inbound import Backoff, InboundESL
from hotline.telephony.esl_outbound import BridgeResult, CallLeg, OutboundServer

__all__ = [
    "Backoff",
    "BridgeResult",
    "CallHungUp",
    "CallLeg",
    "CallLost",
    "ESLAccessDenied",
    "ESLAuthError",
    "ESLCommandError",
    "ESLCommandTimeout",
    "ESLDisconnected",
    "ESLError",
    "ESLJobTimeout",
    "ESLProtocolError",
    "ESLReplyTooLarge",
    "Event",
    "Frame",
    "FrameParser",
    "InboundESL",
    "OutboundServer",
]
