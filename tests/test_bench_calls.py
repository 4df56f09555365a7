"""`bench/calls.py` briefly, on the real path: the numbers in bench/RESULTS.md are only
worth something while the bench still drives calls through the service's IVR, ACD and
store (and still completes them), so a dozen fast calls run here."""

from __future__ import annotations

from bench import calls
from hotline.telephony.esl_connection import ESLConnection


async def test_the_calls_bench_drives_every_call_through_the_ivr_the_acd_and_the_store() -> None:
    send = ESLConnection.send
    # 12 callers and 4 agents: most callers wait in the queue for an agent
    r = await calls.run(12, 4, 0.05, ramp=0.2, jitter=0.0, talk=2.0)

    assert (r["completed"], r["handlers_done"], r["setups"]) == (12, 12, 12)
    assert r["sim"]["causes"] == {"NORMAL_CLEARING": 12} and r["sim"]["stuck"] == 0
    assert (r["acd"]["offered"], r["acd"]["answered"], r["acd"]["abandoned"]) == (12, 12, 0)
    assert r["sim"]["agents_answered"] == 12  # rung with originate, answered by the phones
    store = r["store"]
    assert (store["answered and ended"], store["surveys"], store["work items left"]) == (12, 12, 0)
    # the round trips of both connections were timed: callers' sockets and the inbound client
    assert {"execute playback", "bgapi originate", "api uuid_bridge"} <= set(r["by_command"])
    assert r["commands"] >= 12 * 15
    assert r["parser_ratio"] > 0 and r["parsed_events"] > 12 * 20
    assert calls.targets(r)["every call completed"]
    assert ESLConnection.send is send  # the meter's patches are undone
