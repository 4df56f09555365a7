"""The 12345 phone line made real: FreeSWITCH's calls into the IVR, the ACD and the desk.

    line = EslLine(settings)                       # inbound client, outbound server, switch
    acd = AcdService(deps, line.switch, ...)       # hotline.acd.wiring does this
    line.attach(build_call_entry(settings, deps, card_deps, acd, desk))
    await line.start()

`entry` answers each call and runs its IVR flow; `services` implements the IVR's
service protocols over the hotline; `demo` drives the in-process simulator for
`serve --demo`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

import ivr
from citizen_card.service import CardDeps
from hotline.acd.service import AcdService
from hotline.emergency import EmergencyDesk
from hotline.phone.entry import CallEntry, Hours
from hotline.phone.line import EslLine
from hotline.phone.services import (
    AcdQueue,
    CallbackStore,
    DeskEmergency,
    PhoneCardServices,
    TicketStatus,
    TicketSurveys,
    VoicemailBox,
)
from hotline.settings import Settings
from ticketing.handlers import Deps

__all__ = ["CallEntry", "EslLine", "Hours", "build_call_entry"]


def build_call_entry(
    settings: Settings,
    deps: Deps,
    card_deps: CardDeps | None,
    acd: AcdService,
    desk: EmergencyDesk,
    line: EslLine,
    *,
    registry: CollectorRegistry | None = None,
) -> CallEntry:
    def still_up(uuid: str) -> bool:
        leg = line.server.legs.get(uuid)
        return leg is not None and not leg.hung_up

    queue = AcdQueue(acd, still_up, keep_after_agent=settings.ivr_survey)
    due_s = settings.acd_callback_due_s
    services = ivr.IvrServices(
        tickets=TicketStatus(deps),
        cards=PhoneCardServices(card_deps) if card_deps is not None else None,
        queue=queue,
        emergency=DeskEmergency(desk),
        callbacks=CallbackStore(deps, due_s),
        surveys=TicketSurveys(deps),
        voicemail=VoicemailBox(
            deps, settings.voicemail_dir.resolve(), due_s, instance_id=acd.instance_id
        ),
    )
    flows = ivr.load_shipped()
    if card_deps is None:  # no card service wired: that number gets the 12345 flow
        flows.pop("card-service", None)
    numbers = frozenset(n.strip() for n in settings.ivr_card_numbers.split(",") if n.strip())
    return CallEntry(
        deps,
        flows,
        services,
        queue,
        hours=Hours.parse(settings.ivr_hours),
        card_numbers=numbers,
        survey=settings.ivr_survey,
        language=settings.prompt_language,
        registry=registry,
    )
