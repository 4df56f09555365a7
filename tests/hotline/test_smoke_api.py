async def test_create_dispatch_sign_reply_follow_up(api):
    t = await api.new_ticket()
    assert t["status"] == "new"
    t = await api.move(t["number"], "dispatch", {})
    assert t["lead_department"] == "urban-mgmt"
    t = await api.move(t["number"], "sign", {}, as_="urban")
    t = await api.move(t["number"], "reply", {"reply": "已修复"}, as_="urban")
    t = await api.move(t["number"], "follow-up", {"satisfaction": "satisfied"})
    assert t["status"] == "closed"
