"""IVR flows as data and the interpreter that runs them on a call.

Public surface (everything else is internal)::

    flow = ivr.load_flow(Path("my-flow.yaml"))        # or YAML text; raises FlowError
    flows = ivr.load_shipped()                         # {"12345-default": Flow, ...}
    flow = ivr.select_flow(flows, is_working_time, now)
    outcome = await ivr.run_flow(flow, call, ivr.IvrServices(queue=acd, ...), language="zh")

The call leg implements ``CallControl``; the ACD ``Queue``; the emergency hand-off
``Emergency``; the hotline wires ``TicketLookup``, ``CardServices``, ``Callbacks``,
``Surveys`` and ``Voicemails``. ``ivr.testing.ScriptedCall`` is a scripted caller.
"""

from ivr.audio import (
    SHIPPED_PROMPTS,
    PromptSet,
    position_announcement,
    say_amount,
    say_digits,
    say_number,
)
from ivr.interpreter import (
    DEFAULT_MAX_STEPS,
    MissingService,
    Outcome,
    OutcomeStatus,
    Step,
    run_flow,
)
from ivr.loader import Flow, FlowError, Problem, load_flow, load_shipped, shipped_flow_files
from ivr.protocols import (
    SATISFACTION_BY_SCORE,
    BalanceQuery,
    CallbackRequest,
    Callbacks,
    CallControl,
    CallerHungUp,
    CardOutcome,
    CardReply,
    CardServices,
    Emergency,
    EmergencyRequest,
    EmergencyResult,
    IvrServices,
    LossReport,
    Queue,
    QueueRequest,
    QueueResult,
    QueueStatus,
    SurveyAnswer,
    Surveys,
    TicketLookup,
    TicketPhase,
    VoicemailMessage,
    Voicemails,
)
from ivr.selection import AFTER_HOURS_FLOW, DEFAULT_FLOW, select_flow

__all__ = [
    "AFTER_HOURS_FLOW",
    "DEFAULT_FLOW",
    "DEFAULT_MAX_STEPS",
    "SATISFACTION_BY_SCORE",
    "SHIPPED_PROMPTS",
    "BalanceQuery",
    "CallControl",
    "CallbackRequest",
    "Callbacks",
    "CallerHungUp",
    "CardOutcome",
    "CardReply",
    "CardServices",
    "Emergency",
    "EmergencyRequest",
    "EmergencyResult",
    "Flow",
    "FlowError",
    "IvrServices",
    "LossReport",
    "MissingService",
    "Outcome",
    "OutcomeStatus",
    "Problem",
    "PromptSet",
    "Queue",
    "QueueRequest",
    "QueueResult",
    "QueueStatus",
    "Step",
    "SurveyAnswer",
    "Surveys",
    "TicketLookup",
    "TicketPhase",
    "VoicemailMessage",
    "Voicemails",
    "load_flow",
    "load_shipped",
    "position_announcement",
    "run_flow",
    "say_amount",
    "say_digits",
    "say_number",
    "select_flow",
    "shipped_flow_files",
]
