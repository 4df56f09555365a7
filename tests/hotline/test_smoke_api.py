from hotline.app import create_app
from hotline.appkeys import DEPS
from tests.conftest import Api, _seed, make_settings


async def test_serve_migrates_an_empty_database_then_a_ticket_goes_the_whole_way(
    aiohttp_client, db_url, tmp_path
):
    app = create_app(make_settings(tmp_path, db_url), watch_deadlines=False)  # migrate=True
    api = Api(await aiohttp_client(app), app)
    await _seed(app[DEPS])
    t = await api.new_ticket()
    assert t["status"] == "new"
    t = await api.move(t["number"], "dispatch", {})
    assert t["lead_department"] == "urban-mgmt"
    t = await api.move(t["number"], "sign", {}, as_="urban")
    t = await api.move(t["number"], "reply", {"reply": "已修复"}, as_="urban")
    t = await api.move(t["number"], "follow-up", {"satisfaction": "satisfied"})
    assert t["status"] == "closed"
    assert t["satisfaction"] == "satisfied"
