"""Knowledge base: Chinese search without spaces, ranking, validity, editing rights.

Runs on SQLite and PostgreSQL (the `api` fixture): the n-gram index must behave
the same on both stores.
"""

from __future__ import annotations

from datetime import timedelta

from hotline.appkeys import DEPS
from hotline.console.kb import grams, query_grams

ARTICLES = [
    ("路灯不亮怎么报修？", "路灯故障请拨打12345转城管，或在市民App提交，两个工作日内修复。"),
    ("小区停水怎么办", "先查看自来水公司停水公告；非计划停水请报修，水务集团24小时内响应。"),
    ("如何办理市民卡挂失", "拨打12345按提示挂失，或到任一服务网点办理，挂失后立即冻结支付。"),
    ("道路积水", "暴雨期间道路积水由排水公司处理，夜间路灯照明不足也可一并反映。"),
    ("How do I report a broken streetlight?", "Call 12345 or use the city app."),
]


async def seed(api) -> list[int]:  # type: ignore[no-untyped-def]
    ids = []
    for q, a in ARTICLES:
        r = await api.post("/api/v1/kb/articles", {"question": q, "answer": a}, as_="supervisor")
        assert r.status == 201, await r.text()
        ids.append((await r.json())["id"])
    return ids


async def search(api, q: str, as_: str = "agent", **params: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = await api.get("/api/v1/kb/articles", params={"q": q, **params}, as_=as_)
    assert r.status == 200, await r.text()
    return (await r.json())["items"]


def test_grams_cut_chinese_into_characters_and_pairs_and_words_into_prefixes():
    assert grams("路灯不亮") == {"路", "灯", "不", "亮", "路灯", "灯不", "不亮"}
    assert grams("Streetlight 12345") >= {"streetlight", "str", "stre", "street", "12345"}
    assert query_grams("路灯") == ["路灯"]
    assert query_grams("灯") == ["灯"]
    assert query_grams("ＡＢＣ路灯") == ["abc", "路灯"]  # full-width folded


async def test_finds_luden_inside_luden_bu_liang_and_ranks_the_question_first(api):
    ids = await seed(api)
    hits = await search(api, "路灯")
    # the article whose question holds 路灯 first, the one that mentions it in passing next
    assert [h["id"] for h in hits] == [ids[0], ids[3]]
    assert hits[0]["question"] == "路灯不亮怎么报修？"
    assert hits[0]["match"] == {"coverage": 1.0, "verbatim": True}


async def test_longer_chinese_queries_rank_by_how_much_of_them_matches(api):
    ids = await seed(api)
    hits = await search(api, "我家小区停水了")
    assert hits[0]["id"] == ids[1]
    hits = await search(api, "市民卡丢了要挂失")
    assert hits[0]["id"] == ids[2]
    assert await search(api, "火箭发射") == []  # nothing shared: nothing returned


async def test_english_words_match_by_prefix(api):
    ids = await seed(api)
    hits = await search(api, "street")
    assert [h["id"] for h in hits] == [ids[4]]


async def test_retired_and_out_of_date_articles_are_not_offered_to_agents(api):
    ids = await seed(api)
    r = await api.post(f"/api/v1/kb/articles/{ids[0]}/retire", {}, as_="supervisor")
    assert r.status == 200
    assert (await r.json())["status"] == "retired"
    assert [h["id"] for h in await search(api, "路灯")] == [ids[3]]
    # an editor may still find it
    assert ids[0] in [h["id"] for h in await search(api, "路灯", "supervisor", include_retired="1")]
    # an agent asking for retired ones gets only what is in force
    assert ids[0] not in [h["id"] for h in await search(api, "路灯", include_retired="1")]
    today = api.app[DEPS].clock().astimezone(api.app[DEPS].tz).date()
    r = await api.patch(
        f"/api/v1/kb/articles/{ids[3]}",
        {"valid_to": (today - timedelta(days=1)).isoformat()},
        as_="supervisor",
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["in_force"] is False
    assert await search(api, "路灯") == []


async def test_editing_reindexes_and_detects_concurrent_edits(api):
    ids = await seed(api)
    r = await api.get(f"/api/v1/kb/articles/{ids[1]}")
    art = await r.json()
    r = await api.patch(
        f"/api/v1/kb/articles/{ids[1]}",
        {"question": "燃气泄漏怎么办", "version": art["version"]},
        as_="supervisor",
    )
    assert r.status == 200
    assert (await r.json())["version"] == art["version"] + 1
    assert [h["id"] for h in await search(api, "燃气")] == [ids[1]]
    # the old question is gone from the index; only the answer's 停水 still matches
    (hit,) = await search(api, "小区停水")
    assert hit["id"] == ids[1]
    assert hit["match"] == {"coverage": 0.333, "verbatim": False}
    stale = await api.patch(
        f"/api/v1/kb/articles/{ids[1]}",
        {"answer": "旧版本的修改", "version": art["version"]},
        as_="supervisor",
    )
    assert stale.status == 409


async def test_only_supervisors_and_admins_edit(sqlite_api):
    body = {"question": "问", "answer": "答"}
    r = await sqlite_api.post("/api/v1/kb/articles", body, as_="agent")
    assert r.status == 403
    r = await sqlite_api.post("/api/v1/kb/articles", body, as_="urban")
    assert r.status == 403
    r = await sqlite_api.post("/api/v1/kb/articles", body, as_="admin")
    assert r.status == 201


async def test_bad_articles_are_refused_with_the_field_named(sqlite_api):
    cases = [
        ({"question": "", "answer": "答"}, "question"),
        ({"question": "问", "answer": "答", "category": "no.such"}, "category"),
        ({"question": "问", "answer": "答", "owner_department": "nowhere"}, "owner_department"),
        ({"question": "问", "answer": "答", "valid_from": "2026-02-01", "valid_to": "2026-01-01"},
         "(body)"),
        ({"question": "问", "answer": "答", "extra": 1}, "extra"),
    ]  # fmt: skip
    for body, field in cases:
        r = await sqlite_api.post("/api/v1/kb/articles", body, as_="supervisor")
        assert r.status == 422, body
        fields = [e["field"] for e in (await r.json())["errors"]]
        assert field in fields, (body, fields)
    r = await sqlite_api.get("/api/v1/kb/articles/999")
    assert r.status == 404
    r = await sqlite_api.get("/api/v1/kb/articles/abc")
    assert r.status == 404
    r = await sqlite_api.get("/api/v1/kb/articles", params={"limit": "500"})
    assert r.status == 422
