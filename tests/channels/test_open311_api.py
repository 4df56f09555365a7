"""Open311 GeoReport v2 at /open311/v2, as a client sees it: both formats, the spec's
own example request, its error format, and the tickets behind it."""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import aiohttp
import pytest
import sqlalchemy as sa

from channels.open311 import issue_key
from hotline.appkeys import DEPS, INTAKE
from ticketing.intake import NewTicket
from ticketing.lifecycle import Role
from ticketing.ports import Principal

V2 = "/open311/v2"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00")
REQUEST_FIELDS = [
    "service_request_id",
    "status",
    "status_notes",
    "service_name",
    "service_code",
    "description",
    "agency_responsible",
    "service_notice",
    "requested_datetime",
    "updated_datetime",
    "expected_datetime",
    "address",
    "address_id",
    "zipcode",
    "lat",
    "long",
    "media_url",
]


async def key_for(api, name: str = "fixmystreet") -> str:  # type: ignore[no-untyped-def]
    return await issue_key(api.app[DEPS].db, name)


def xml_of(body: bytes) -> ET.Element:
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    return ET.fromstring(body)


def street_light(key: str, **extra: str) -> dict[str, str]:
    form = {
        "api_key": key,
        "jurisdiction_id": "city.gov",
        "service_code": "urban.street-lights",
        "lat": "39.9087",
        "long": "116.3975",
        "address_string": "幸福路12号南门",
        "description": "路灯整晚不亮，晚上很黑",
        "attribute[LIGHT_STATE]": "off",
    }
    form.update(extra)
    return form


async def post(api, form, fmt: str = "json", headers=None):  # type: ignore[no-untyped-def]
    body = form if isinstance(form, (bytes, str)) else urlencode(form)
    return await api.client.post(
        f"{V2}/requests.{fmt}", data=body, headers={**FORM, **(headers or {})}
    )


async def create(api, form) -> str:  # type: ignore[no-untyped-def]
    r = await post(api, form)
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    return item["service_request_id"]


async def one_request(api, number: str) -> dict:  # type: ignore[no-untyped-def]
    r = await api.client.get(f"{V2}/requests/{number}.json")
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    return item


async def errors(r, status: int) -> list[str]:  # type: ignore[no-untyped-def]
    assert r.status == status, await r.text()
    if r.content_type == "application/json":
        body = await r.json()
        assert all(e["code"] == status for e in body)
        return [e["description"] for e in body]
    assert r.content_type == "text/xml"
    root = xml_of(await r.read())
    assert root.tag == "errors"
    assert [c.tag for c in root] == ["error"] * len(root)
    assert all([x.tag for x in e] == ["code", "description"] for e in root)
    assert all(e.findtext("code") == str(status) for e in root)
    return [e.findtext("description") or "" for e in root]


# ---------------------------------------------------------------- discovery and services


async def test_discovery_in_both_formats(sqlite_api):
    r = await sqlite_api.client.get(f"{V2}/discovery.json")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    doc = await r.json()
    assert list(doc) == ["changeset", "contact", "key_service", "endpoints", "jurisdiction_id"]
    assert doc["jurisdiction_id"] == "city.gov"  # HOTLINE_OPEN311_JURISDICTION, from CITY
    (ep,) = doc["endpoints"]
    assert ep["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert ep["url"].endswith("/open311/v2")
    assert ep["type"] == "production"
    assert ep["formats"] == ["text/xml", "application/json"]
    assert datetime.fromisoformat(doc["changeset"]) <= datetime.now(UTC)

    r = await sqlite_api.client.get(f"{V2}/discovery.xml")
    assert r.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = xml_of(await r.read())
    assert root.tag == "discovery"
    assert [c.tag for c in root] == [
        "changeset",
        "contact",
        "key_service",
        "endpoints",
        "jurisdiction_id",
    ]
    assert root.findtext("jurisdiction_id") == "city.gov"
    (endpoint,) = root.find("endpoints")  # type: ignore[union-attr]
    assert endpoint.tag == "endpoint"
    assert [f.text for f in endpoint.find("formats")] == ["text/xml", "application/json"]  # type: ignore[union-attr]
    assert root.findtext("changeset") == doc["changeset"]


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_discovery_is_also_served_above_the_version(sqlite_api, fmt):
    """Service Discovery "is meant to supercede the base URL for the Open311 endpoint":
    /open311/discovery.* is the same document, naming /open311/v2 as the endpoint."""
    versioned = await sqlite_api.client.get(f"{V2}/discovery.{fmt}")
    r = await sqlite_api.client.get(f"/open311/discovery.{fmt}?jurisdiction_id=City.gov")
    assert r.status == 200
    assert r.content_type == versioned.content_type
    assert await r.read() == await versioned.read()
    r = await sqlite_api.client.get(f"/open311/discovery.{fmt}?jurisdiction_id=sfgov.org")
    assert await errors(r, 404) == [
        "jurisdiction_id 'sfgov.org' was not found; this endpoint serves city.gov"
    ]


async def test_services_list_maps_leaf_categories(sqlite_api):
    r = await sqlite_api.client.get(f"{V2}/services.json?jurisdiction_id=city.gov")
    assert r.status == 200
    services = {s["service_code"]: s for s in await r.json()}
    assert "urban" not in services  # a group, not a service
    assert services["urban.street-lights"] == {
        "service_code": "urban.street-lights",
        "service_name": "路灯不亮",
        "description": "路灯不亮、闪烁或白天常亮。",
        "metadata": True,
        "type": "realtime",
        "keywords": "路灯, 照明, street light, lamp",
        "group": "城市管理",
    }
    plain = services["labor.wage-arrears"]
    assert plain["metadata"] is False
    assert plain["group"] == "劳动保障"
    assert plain["keywords"] == "欠薪, 劳动保障"

    r = await sqlite_api.client.get(f"{V2}/services.xml")
    root = xml_of(await r.read())
    assert root.tag == "services"
    assert {c.tag for c in root} == {"service"}
    assert len(root) == len(services)
    light = next(s for s in root if s.findtext("service_code") == "urban.street-lights")
    assert [c.tag for c in light] == [
        "service_code",
        "service_name",
        "description",
        "metadata",
        "type",
        "keywords",
        "group",
    ]
    assert light.findtext("metadata") == "true"
    assert light.findtext("type") == "realtime"


async def test_services_list_follows_a_catalog_change(sqlite_api):
    """The list is rendered once per catalog; a reload (an admin's change) shows at once."""
    from ticketing.catalog import category_t

    deps = sqlite_api.app[DEPS]
    first = {
        s["service_code"] for s in await (await sqlite_api.client.get(f"{V2}/services.json")).json()
    }
    again = await (await sqlite_api.client.get(f"{V2}/services.json")).read()
    assert {s["service_code"] for s in json.loads(again)} == first
    assert "urban.street-lights" in first
    async with deps.db.write() as conn:
        await conn.execute(
            sa.update(category_t)
            .where(category_t.c.code == "urban.street-lights")
            .values(active=False)
        )
    await deps.catalog.reload(deps.db)
    for fmt in ("json", "xml"):
        body = await (await sqlite_api.client.get(f"{V2}/services.{fmt}")).read()
        codes = (
            {s["service_code"] for s in json.loads(body)}
            if fmt == "json"
            else {e.findtext("service_code") for e in xml_of(body)}
        )
        assert codes == first - {"urban.street-lights"}


async def test_service_definition_in_both_formats(sqlite_api):
    r = await sqlite_api.client.get(f"{V2}/services/urban.street-lights.json")
    assert r.status == 200
    d = await r.json()
    assert d["service_code"] == "urban.street-lights"
    first, count, pole = d["attributes"]
    assert first == {
        "variable": True,
        "code": "LIGHT_STATE",
        "datatype": "singlevaluelist",
        "required": True,
        "datatype_description": None,
        "order": 1,
        "description": "路灯现在的状况",
        "values": [
            {"key": "off", "name": "不亮"},
            {"key": "flicker", "name": "闪烁"},
            {"key": "day-on", "name": "白天常亮"},
            {"key": "damaged", "name": "灯杆或灯具损坏"},
        ],
    }
    assert (count["datatype"], count["order"], count["required"]) == ("number", 2, False)
    assert "values" not in pole

    r = await sqlite_api.client.get(f"{V2}/services/urban.street-lights.xml")
    root = xml_of(await r.read())
    assert root.tag == "service_definition"
    assert [c.tag for c in root] == ["service_code", "attributes"]
    attr = root.find("attributes/attribute")
    assert attr is not None
    assert [c.tag for c in attr] == [
        "variable",
        "code",
        "datatype",
        "required",
        "datatype_description",
        "order",
        "description",
        "values",
    ]
    assert [(v.findtext("key"), v.findtext("name")) for v in attr.find("values")] == [  # type: ignore[union-attr]
        ("off", "不亮"),
        ("flicker", "闪烁"),
        ("day-on", "白天常亮"),
        ("damaged", "灯杆或灯具损坏"),
    ]

    r = await sqlite_api.client.get(f"{V2}/services/labor.wage-arrears.json")
    assert await r.json() == {"service_code": "labor.wage-arrears", "attributes": []}


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_unknown_service_is_404_in_the_spec_error_format(sqlite_api, fmt):
    r = await sqlite_api.client.get(f"{V2}/services/no.such-thing.{fmt}")
    assert await errors(r, 404) == ["service_code 'no.such-thing' was not found"]


async def test_unknown_format_answers_in_xml(sqlite_api):
    r = await sqlite_api.client.get(f"{V2}/services.html")
    assert await errors(r, 404) == ["format 'html' is not supported; use xml or json"]


# ---------------------------------------------------------------- POST


async def test_the_specs_example_request_creates_a_ticket_in_the_queue(api):
    key = await key_for(api)
    # the wiki's example, with our service and attribute codes
    body = (
        f"api_key={key}&jurisdiction_id=city.gov&service_code=urban.street-lights"
        "&lat=37.76524078&long=-122.4212043&address_string=1234+5th+street"
        "&email=smit333%40sfgov.edu&device_id=tt222111&account_id=123456"
        "&first_name=john&last_name=smith&phone=13812345678"
        "&description=A+large+sinkhole+is+destroying+the+street"
        "&media_url=http%3A%2F%2Ffarm3.static.flickr.com%2F2002%2F2212426634_5ed477a060.jpg"
        "&attribute[LIGHT_STATE]=off&attribute[POLE_NUMBER]=COISL001"
    )
    r = await post(api, body, "xml")
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = xml_of(await r.read())
    assert root.tag == "service_requests"
    (req,) = root
    assert req.tag == "request"
    assert [c.tag for c in req] == ["service_request_id", "service_notice", "account_id"]
    number = req.findtext("service_request_id") or ""
    assert re.fullmatch(r"\d{13}", number)
    assert req.findtext("account_id") == "123456"
    assert "12345" in (req.findtext("service_notice") or "")

    # the agents' view: a normal ticket on the open311 channel, in the queue
    t = await (await api.get(f"/api/v1/tickets/{number}")).json()
    assert t["channel"] == "open311"
    assert t["status"] == "new"
    assert t["category"] == {"code": "urban.street-lights", "name": "路灯不亮"}
    assert t["kind"] == "request"
    assert t["contact"]["name"] == "john smith"
    assert t["contact"]["phone"] == "138****5678"
    assert t["contact"]["channel_ids"] == {
        "open311_account": "123456",
        "open311_device": "tt222111",
    }
    assert t["location"] == {
        "address": "1234 5th street",
        "district": None,
        "lat": 37.76524078,
        "lon": -122.4212043,
    }
    assert t["description"].startswith("A large sinkhole is destroying the street\n\n")
    assert "路灯现在的状况：不亮" in t["description"]
    assert "灯杆上的编号（如能看到）：COISL001" in t["description"]
    assert "2212426634_5ed477a060.jpg" in t["description"]
    assert t["created_by"] == "open311:fixmystreet"
    queue = await (await api.get("/api/v1/queue")).json()
    assert number in json.dumps(queue)

    # the public view: the client's own words, no personal data
    item = await one_request(api, number)
    assert list(item) == REQUEST_FIELDS
    assert item["description"] == "A large sinkhole is destroying the street"
    assert item["media_url"] == ("http://farm3.static.flickr.com/2002/2212426634_5ed477a060.jpg")
    text = json.dumps(item, ensure_ascii=False)
    for private in ("smit333", "john", "smith", "13812345678", "5678", "tt222111", '123456"'):
        assert private not in text


async def test_multivaluelist_and_json_answer(api):
    key = await key_for(api)
    form = [
        ("api_key", key),
        ("service_code", "urban.garbage"),
        ("address_id", "ADDR-778"),
        ("attribute[WASTE_TYPE][]", "bulky"),
        ("attribute[WASTE_TYPE][]", "household"),
        ("attribute[OVERFLOW]", "yes"),
        ("first_name", "小明"),
        ("last_name", "王"),
    ]
    r = await post(api, urlencode(form))
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    (item,) = await r.json()
    assert set(item) == {"service_request_id", "service_notice", "account_id"}
    assert item["account_id"] is None
    t = await (await api.get(f"/api/v1/tickets/{item['service_request_id']}")).json()
    assert t["contact"]["name"] == "王小明"
    assert "垃圾种类（可多选）：生活垃圾、大件垃圾" in t["description"]
    assert "地址编号：ADDR-778" in t["description"]
    public = await one_request(api, item["service_request_id"])
    assert public["address_id"] == "ADDR-778"
    assert public["description"] is None
    assert public["address"] is None


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_api_key_is_required_and_checked(sqlite_api, fmt):
    key = await key_for(sqlite_api)
    form = street_light(key)
    del form["api_key"]
    r = await post(sqlite_api, form, fmt)
    assert await errors(r, 403) == ["api_key is missing -- can't proceed with create_request."]
    r = await post(sqlite_api, street_light("xyz"), fmt)  # the spec example's key
    assert await errors(r, 403) == [
        "Invalid api_key received -- can't proceed with create_request."
    ]


async def test_api_key_may_come_in_the_query_string(sqlite_api):
    key = await key_for(sqlite_api)
    form = street_light(key)
    del form["api_key"]
    r = await sqlite_api.client.post(
        f"{V2}/requests.json?api_key={key}", data=urlencode(form), headers=FORM
    )
    assert r.status == 200, await r.text()


# ---------------------------------------------------------------- jurisdiction_id

OURS = ("", "?jurisdiction_id=", "?jurisdiction_id=city.gov", "?jurisdiction_id=CITY.Gov")
ELSEWHERE = "jurisdiction_id 'sfgov.org' was not found; this endpoint serves city.gov"


async def every_get_path(api) -> list[str]:  # type: ignore[no-untyped-def]
    """One path per GET method, with a request and a token that exist."""
    key = await key_for(api)
    r = await post(api, street_light(key), headers={"Idempotency-Key": "jur-token"})
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    number = item["service_request_id"]
    return [
        "discovery",
        "services",
        "services/urban.street-lights",
        "requests",
        f"requests/{number}",
        "tokens/jur-token",
    ]


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_every_get_serves_our_jurisdiction_or_none_and_404s_any_other(sqlite_api, fmt):
    ctype = "application/json" if fmt == "json" else "text/xml"
    for path in await every_get_path(sqlite_api):
        for query in OURS:  # absent, empty (= absent), ours in any case
            r = await sqlite_api.client.get(f"{V2}/{path}.{fmt}{query}")
            assert r.status == 200, (path, query, await r.text())
            assert r.content_type == ctype
        r = await sqlite_api.client.get(f"{V2}/{path}.{fmt}?jurisdiction_id=sfgov.org")
        assert r.content_type == ctype
        assert await errors(r, 404) == [ELSEWHERE], path
        # ours given twice is still ours; ours and another is another
        r = await sqlite_api.client.get(
            f"{V2}/{path}.{fmt}?jurisdiction_id=city.gov&jurisdiction_id=sfgov.org"
        )
        assert await errors(r, 404) == [ELSEWHERE], path


@pytest.mark.parametrize("fmt", ["xml", "json"])
async def test_post_takes_our_jurisdiction_from_form_or_query_and_files_nothing_else(
    sqlite_api, fmt
):
    key = await key_for(sqlite_api)
    for i, (form_value, query) in enumerate(
        [(None, ""), ("", ""), ("CITY.GOV", ""), (None, "?jurisdiction_id=city.gov")]
    ):
        form = street_light(key, description=f"路灯 {fmt} {i}")
        if form_value is None:
            del form["jurisdiction_id"]
        else:
            form["jurisdiction_id"] = form_value
        r = await sqlite_api.client.post(
            f"{V2}/requests.{fmt}{query}", data=urlencode(form), headers=FORM
        )
        assert r.status == 200, (form_value, query, await r.text())
    before = await (await sqlite_api.client.get(f"{V2}/requests.json")).json()

    elsewhere = street_light(key, jurisdiction_id="sfgov.org", description="别处的路灯")
    r = await post(sqlite_api, elsewhere, fmt)
    assert await errors(r, 404) == [ELSEWHERE]
    # in the query string, even with ours in the form
    r = await sqlite_api.client.post(
        f"{V2}/requests.{fmt}?jurisdiction_id=sfgov.org",
        data=urlencode(street_light(key, description="别处的路灯")),
        headers=FORM,
    )
    assert await errors(r, 404) == [ELSEWHERE]
    # the wrong city is named before the key is looked at: that is what the client must fix
    r = await post(sqlite_api, street_light("xyz", jurisdiction_id="sfgov.org"), fmt)
    assert await errors(r, 404) == [ELSEWHERE]
    after = await (await sqlite_api.client.get(f"{V2}/requests.json")).json()
    assert after == before  # no ticket for another jurisdiction


async def test_a_long_foreign_jurisdiction_is_named_shortened(sqlite_api):
    r = await sqlite_api.client.get(f"{V2}/services.json?jurisdiction_id={'j' * 3000}")
    assert await errors(r, 404) == [
        f"jurisdiction_id '{'j' * 100}...' was not found; this endpoint serves city.gov"
    ]


@pytest.fixture
def hangzhou(monkeypatch):  # type: ignore[no-untyped-def]
    """HOTLINE_OPEN311_JURISDICTION set; list it before sqlite_api, which reads it."""
    monkeypatch.setenv("HOTLINE_OPEN311_JURISDICTION", "Hangzhou.gov.cn")


async def test_the_configured_jurisdiction_is_served_and_the_default_is_not(hangzhou, sqlite_api):
    api = sqlite_api
    doc = await (await api.client.get(f"{V2}/discovery.json")).json()
    assert doc["jurisdiction_id"] == "hangzhou.gov.cn"
    r = await api.client.get(f"{V2}/services.xml?jurisdiction_id=HANGZHOU.gov.cn")
    assert r.status == 200
    r = await api.client.get(f"{V2}/services.xml?jurisdiction_id=city.gov")
    assert await errors(r, 404) == [
        "jurisdiction_id 'city.gov' was not found; this endpoint serves hangzhou.gov.cn"
    ]


async def test_a_body_over_the_limit_is_413_in_the_spec_format(sqlite_api):
    key = await key_for(sqlite_api)
    body = urlencode(street_light(key)) + "&pad=" + "x" * 1_100_000
    r = await post(sqlite_api, body, "xml")
    assert await errors(r, 413) == ["the request body is too large"]


async def test_a_revoked_key_is_refused(sqlite_api):
    from channels.open311 import revoke_key

    key = await key_for(sqlite_api)
    await create(sqlite_api, street_light(key))
    await revoke_key(sqlite_api.app[DEPS].db, "fixmystreet")
    r = await post(sqlite_api, street_light(key, description="again"))
    assert r.status == 403


@pytest.mark.parametrize(
    ("change", "status", "expected"),
    [
        ({"service_code": "no.such"}, 404, ["service_code 'no.such' was not found"]),
        ({"service_code": ""}, 400, ["service_code was not provided"]),
        (
            {"lat": "", "long": "", "address_string": ""},
            400,
            ["a location is required: lat and long, address_string or address_id"],
        ),
        ({"long": "", "address_string": ""}, 400, ["lat and long must be sent together"]),
        ({"lat": "91"}, 400, ["lat must be between -90 and 90 (WGS84 degrees)"]),
        ({"long": "nan"}, 400, ["long is not a number"]),
        ({"description": "长" * 4001}, 400, ["description is longer than 4000 characters"]),
        ({"email": "not-an-email"}, 400, ["email is not an email address"]),
        ({"media_url": "javascript:alert(1)"}, 400, ["media_url must be an http or https URL"]),
        ({"phone": "12"}, 400, ["phone: not a valid phone number"]),
        (
            {"attribute[LIGHT_STATE]": "purple"},
            400,
            ["attribute[LIGHT_STATE]: 'purple' is not among off, flicker, day-on, damaged"],
        ),
        (
            {"attribute[LIGHT_STATE]": ""},
            400,
            ["attribute[LIGHT_STATE] (路灯现在的状况) is required"],
        ),
        ({"attribute[LIGHT_COUNT]": "three"}, 400, ["attribute[LIGHT_COUNT] must be a number"]),
        (  # a client's own attribute never stands in for the definition's answer
            {"attribute[LIGHT_STATE]": "", "attribute[light_state]": "off"},
            400,
            ["attribute[LIGHT_STATE] (路灯现在的状况) is required"],
        ),
        (
            {"attribute[]": "x"},
            400,
            ["attribute[] is not of the form attribute[code] or attribute[code][]"],
        ),
        (
            {"attribute[POLE_NUMBER]": "A\nB"},
            400,
            ["attribute[POLE_NUMBER]: one line of at most 200 characters"],
        ),
        ({"address_string": "路" * 301}, 400, ["address_string is longer than 300 characters"]),
    ],
)
async def test_bad_input_is_a_clear_error(sqlite_api, change, status, expected):
    key = await key_for(sqlite_api)
    r = await post(sqlite_api, street_light(key, **change))
    assert await errors(r, status) == expected


async def test_several_problems_are_reported_together_and_4000_characters_pass(sqlite_api):
    key = await key_for(sqlite_api)
    r = await post(
        sqlite_api, street_light(key, lat="x", email="@", **{"attribute[LIGHT_STATE]": ""})
    )
    assert await errors(r, 400) == [
        "lat is not a number",
        "email is not an email address",
        "attribute[LIGHT_STATE] (路灯现在的状况) is required",
    ]
    await create(sqlite_api, street_light(key, description="长" * 4000))


async def test_undecodable_or_foreign_bodies_are_400_not_500(sqlite_api):
    key = await key_for(sqlite_api)
    base = urlencode(street_light(key)).encode()
    r = await post(sqlite_api, base + b"&description=%FF%FE")
    assert await errors(r, 400) == ["the form is not valid UTF-8"]
    r = await post(sqlite_api, base + b"&\xff=1")
    assert await errors(r, 400) == ["the form is not valid UTF-8"]
    r = await post(sqlite_api, base + b"&description=a%00b")
    assert await errors(r, 400) == ["description contains control characters"]
    r = await sqlite_api.client.post(
        f"{V2}/requests.json", data=base, headers={"Content-Type": "application/json"}
    )
    assert await errors(r, 400) == ["send application/x-www-form-urlencoded, not application/json"]
    r = await post(sqlite_api, base + b"&service_code=urban.garbage")
    assert await errors(r, 400) == ["service_code was given more than once"]
    r = await post(sqlite_api, base + b"&" + b"&".join(b"f%d=1" % i for i in range(300)))
    assert await errors(r, 400) == ["the form has more than 200 fields"]


async def test_the_form_is_read_as_utf8_whatever_its_charset_label_says(sqlite_api):
    """The spec: "All text received ... will be assumed to be UTF-8". Apache HttpClient's
    UrlEncodedFormEntity (GeoReporter for Android) labels every form ISO-8859-1."""
    key = await key_for(sqlite_api)
    body = urlencode(street_light(key, description="路灯不亮 café"))
    for label in ("ISO-8859-1", "windows-1252", "gbk", "no-such-charset"):
        r = await sqlite_api.client.post(
            f"{V2}/requests.json",
            data=body + f"&device_id={label}",
            headers={"Content-Type": f"application/x-www-form-urlencoded; charset={label}"},
        )
        assert r.status == 200, (label, await r.text())
        (item,) = await r.json()
        assert (await one_request(sqlite_api, item["service_request_id"]))["description"] == (
            "路灯不亮 café"
        )


async def test_a_form_that_is_not_utf8_is_read_in_the_legacy_charset_it_names(sqlite_api):
    key = await key_for(sqlite_api)
    for label, codec, text in (
        ("ISO-8859-1", "latin-1", "café crème"),
        ("GBK", "gbk", "路灯不亮"),
        ("gb2312", "gb2312", "井盖"),
    ):
        form = street_light(key, description=text, address_string=f"{text} 12")
        r = await sqlite_api.client.post(
            f"{V2}/requests.xml",
            data=urlencode(form, encoding=codec),
            headers={"Content-Type": f"application/x-www-form-urlencoded; charset={label}"},
        )
        assert r.status == 200, (label, await r.text())
        number = xml_of(await r.read()).findtext("request/service_request_id") or ""
        item = await one_request(sqlite_api, number)
        assert (item["description"], item["address"]) == (text, f"{text} 12")
    r = await sqlite_api.client.post(
        f"{V2}/requests.json",
        data=urlencode(street_light(key)) + "&description=%FF%FE",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-16"},
    )
    assert await errors(r, 400) == ["the form is not valid UTF-8"]


def multipart(fields: list[tuple[str, str]]) -> aiohttp.FormData:
    form = aiohttp.FormData(charset="utf-8", default_to_multipart=True)
    for k, v in fields:
        form.add_field(k, v)
    return form


async def test_multipart_form_data_is_read_like_a_urlencoded_form(api):
    """Browsers posting a FormData and apps attaching a photo send multipart/form-data."""
    key = await key_for(api)
    fields = [
        ("api_key", key),
        ("service_code", "urban.garbage"),
        ("address_string", "和平街3号"),
        ("description", "垃圾两天没人收\n臭味很大"),
        ("attribute[WASTE_TYPE][]", "bulky"),
        ("attribute[WASTE_TYPE][]", "household"),
        ("attribute[OVERFLOW]", "yes"),
    ]
    r = await api.client.post(f"{V2}/requests.json", data=multipart(fields))
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    number = item["service_request_id"]
    public = await one_request(api, number)
    assert (public["address"], public["description"]) == ("和平街3号", "垃圾两天没人收\n臭味很大")
    t = await (await api.get(f"/api/v1/tickets/{number}")).json()
    assert "垃圾种类（可多选）：生活垃圾、大件垃圾" in t["description"]
    # the same report sent again as a urlencoded form is a retry of the first
    assert await create(api, urlencode(fields)) == number


async def test_a_multipart_file_is_refused_never_silently_dropped(sqlite_api):
    key = await key_for(sqlite_api)
    form = multipart(list(street_light(key).items()))
    form.add_field("media", b"\x89PNG\r\n\x1a\n....", filename="p.png", content_type="image/png")
    r = await sqlite_api.client.post(f"{V2}/requests.xml", data=form)
    assert await errors(r, 400) == [
        "media: files cannot be uploaded here; send media_url, a link to the file"
    ]
    assert await (await sqlite_api.client.get(f"{V2}/requests.json")).json() == []
    r = await sqlite_api.client.post(
        f"{V2}/requests.json",
        data=b"api_key=x",
        headers={"Content-Type": "multipart/form-data"},
    )
    assert await errors(r, 400) == ["the multipart form has no boundary"]


# ---------------------------------------------------------------- retries


async def test_a_blind_retry_gets_the_first_answer_and_one_ticket(api):
    key = await key_for(api)
    form = street_light(key)
    first = await create(api, form)
    reordered = dict(reversed(list(form.items())))
    assert await create(api, reordered) == first
    other = await create(api, street_light(key, description="另一盏灯"))
    assert other != first
    listed = await (await api.client.get(f"{V2}/requests.json")).json()
    assert [i["service_request_id"] for i in listed] == [other, first]


async def test_idempotency_key_replays_refuses_reuse_and_is_a_token(api):
    key = await key_for(api)
    h = {"Idempotency-Key": "c0ffee-0001"}
    first = await create_with(api, street_light(key), h)
    assert await create_with(api, street_light(key), h) == first
    r = await post(api, street_light(key, description="不同的内容"), headers=h)
    assert await errors(r, 400) == [
        "this Idempotency-Key was used for a different request; send a new one"
    ]
    for fmt in ("json", "xml"):
        r = await api.client.get(f"{V2}/tokens/c0ffee-0001.{fmt}")
        assert r.status == 200
    r = await api.client.get(f"{V2}/tokens/c0ffee-0001.json")
    assert await r.json() == [{"service_request_id": first, "token": "c0ffee-0001"}]
    r = await api.client.get(f"{V2}/tokens/c0ffee-0001.xml")
    root = xml_of(await r.read())
    assert [(c.tag, c.text) for c in root[0]] == [
        ("service_request_id", first),
        ("token", "c0ffee-0001"),
    ]
    r = await api.client.get(f"{V2}/tokens/never-issued.xml")
    assert await errors(r, 404) == ["token 'never-issued' was not found"]


async def create_with(api, form, headers) -> str:  # type: ignore[no-untyped-def]
    r = await post(api, form, headers=headers)
    assert r.status == 200, await r.text()
    return (await r.json())[0]["service_request_id"]


async def test_concurrent_identical_posts_make_one_ticket(api):
    key = await key_for(api)
    results = await asyncio.gather(*(post(api, street_light(key)) for _ in range(5)))
    numbers = {(await r.json())[0]["service_request_id"] for r in results}
    assert len(numbers) == 1


# ---------------------------------------------------------------- GET requests


async def test_status_follows_the_ticket_through_its_lifecycle(api):
    key = await key_for(api)
    number = await create(api, street_light(key))
    item = await one_request(api, number)
    assert (item["status"], item["status_notes"]) == ("open", "已受理，等待派单。")
    assert item["agency_responsible"] is None
    assert item["expected_datetime"] is None
    assert OFFSET.fullmatch(item["requested_datetime"])
    assert item["service_name"] == "路灯不亮"

    await api.move(number, "dispatch", {"department": "urban-mgmt"})
    t = await (await api.get(f"/api/v1/tickets/{number}")).json()
    item = await one_request(api, number)
    assert item["status"] == "open"
    assert item["status_notes"] == "已派发至示例市城市管理局，等待签收。"
    assert item["agency_responsible"] == "示例市城市管理局"
    due = datetime.fromisoformat(t["deadlines"]["feedback_due_at"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(item["expected_datetime"]) == due
    assert OFFSET.fullmatch(item["expected_datetime"])

    await api.move(number, "sign", as_="urban")
    assert (await one_request(api, number))["status_notes"] == "示例市城市管理局正在办理。"
    await api.move(number, "reply", {"reply": "已更换灯泡，王女士确认"}, as_="urban")
    item = await one_request(api, number)
    assert (item["status"], item["status_notes"]) == ("open", "示例市城市管理局已答复，等待回访。")
    assert "王女士" not in json.dumps(item, ensure_ascii=False)  # replies stay private

    await api.move(number, "follow-up", {"satisfaction": "satisfied"})
    t = await (await api.get(f"/api/v1/tickets/{number}")).json()
    item = await one_request(api, number)
    assert (item["status"], item["status_notes"]) == ("closed", "已办结。")
    closed = datetime.fromisoformat(t["closed_at"].replace("Z", "+00:00"))
    assert datetime.fromisoformat(item["updated_datetime"]) == closed.replace(microsecond=0)

    for status, expected in (("closed", [number]), ("open", []), ("open,closed", [number])):
        r = await api.client.get(f"{V2}/requests.json?status={status}")
        assert [i["service_request_id"] for i in await r.json()] == expected


async def test_requests_list_in_xml_has_the_spec_elements(api):
    key = await key_for(api)
    number = await create(api, street_light(key, description="<b>灯</b> & 😀"))
    r = await api.client.get(f"{V2}/requests.xml")
    assert r.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = xml_of(await r.read())
    assert root.tag == "service_requests"
    (req,) = root
    assert req.tag == "request"
    assert [c.tag for c in req] == REQUEST_FIELDS
    assert req.findtext("service_request_id") == number
    assert req.findtext("description") == "<b>灯</b> & 😀"
    assert req.findtext("lat") == "39.9087"
    assert req.findtext("long") == "116.3975"
    assert req.findtext("zipcode") == ""
    r = await api.client.get(f"{V2}/requests/{number}.xml")
    assert [c.tag for c in xml_of(await r.read())] == ["request"]


async def test_filters_ids_codes_and_dates(api):
    key = await key_for(api)
    light = await create(api, street_light(key))
    noise = await create(
        api,
        {
            "api_key": key,
            "service_code": "urban.noise",
            "address_string": "和平街3号",
            "attribute[NOISE_SOURCE]": "shop",
            "attribute[NOISE_TIME]": "2026-11-22T23:30:00+08:00",
        },
    )

    async def ids(query: str) -> list[str]:
        r = await api.client.get(f"{V2}/requests.json?{query}")
        assert r.status == 200, await r.text()
        return [i["service_request_id"] for i in await r.json()]

    assert await ids("service_code=urban.noise") == [noise]
    assert await ids("service_code=urban.noise,urban.street-lights") == [noise, light]
    assert await ids("service_code=urban.noise&service_code=urban.street-lights") == [noise, light]
    assert await ids(f"service_request_id={light}") == [light]
    # service_request_id overrides every other argument
    assert await ids(f"service_request_id={light},99999&status=closed&service_code=x") == [light]
    now = datetime.now(UTC)
    start = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await ids(f"start_date={start}&end_date={end}") == [noise, light]
    early = (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await ids(f"start_date={early}&end_date={start}") == []


async def test_a_w3c_year_month_is_a_start_date(sqlite_api):
    """The spec says "Must use w3 format"; the W3C note's formats begin with YYYY and
    YYYY-MM, which a client may send as a whole month (read as its first day)."""
    number = await create(sqlite_api, street_light(await key_for(sqlite_api)))
    month = datetime.now(sqlite_api.app[DEPS].tz).strftime("%Y-%m")
    r = await sqlite_api.client.get(f"{V2}/requests.json?start_date={month}")
    assert r.status == 200, await r.text()
    assert [i["service_request_id"] for i in await r.json()] == [number]


async def test_an_unescaped_plus_in_a_date_offset_still_means_plus(api):
    """Every time in this city is +08:00, and a hand-built URL sends the "+" as is, which a
    query string reads as a space."""
    key = await key_for(api)
    number = await create(api, street_light(key))
    now = datetime.now(UTC).astimezone(api.app[DEPS].tz)
    start = (now - timedelta(days=1)).isoformat(timespec="seconds")
    end = (now + timedelta(days=1)).isoformat(timespec="seconds")
    assert start.endswith("+08:00")
    r = await api.client.get(f"{V2}/requests.json?start_date={start}&end_date={end}")
    assert r.status == 200, await r.text()
    assert [i["service_request_id"] for i in await r.json()] == [number]
    later = (now + timedelta(hours=1)).isoformat(timespec="seconds")
    r = await api.client.get(f"{V2}/requests.json?start_date={later}")
    assert await r.json() == []


async def test_requests_of_a_service_switched_off_can_still_be_filtered_by_its_code(api):
    """GET requests lists them with their service_code; that code must work as a filter."""
    from ticketing.catalog import category_t

    key = await key_for(api)
    number = await create(api, street_light(key))
    deps = api.app[DEPS]
    async with deps.db.write() as conn:
        await conn.execute(
            sa.update(category_t)
            .where(category_t.c.code == "urban.street-lights")
            .values(active=False)
        )
    await deps.catalog.reload(deps.db)
    listed = await (await api.client.get(f"{V2}/requests.json")).json()
    assert [(i["service_request_id"], i["service_code"]) for i in listed] == [
        (number, "urban.street-lights")
    ]
    r = await api.client.get(f"{V2}/requests.json?service_code=urban.street-lights")
    assert r.status == 200, await r.text()
    assert [i["service_request_id"] for i in await r.json()] == [number]
    r = await api.client.get(f"{V2}/requests.json?service_code=urban.no-such")
    assert await errors(r, 400) == ["unknown service_code urban.no-such"]


@pytest.mark.parametrize(
    ("method", "path", "fmt"),
    [
        ("GET", "requests/2026010100001", "xml"),  # no extension
        ("GET", "requests", "xml"),
        ("GET", "service_list.json", "json"),
        ("POST", "request.json", "json"),  # singular, as some clients spell it
        ("GET", "tokens/c0ffee", "xml"),
    ],
)
async def test_unknown_paths_are_404_in_the_spec_error_format(sqlite_api, method, path, fmt):
    r = await sqlite_api.client.request(method, f"{V2}/{path}")
    assert r.content_type == ("application/json" if fmt == "json" else "text/xml")
    assert await errors(r, 404) == ["no such GeoReport v2 resource; see /open311/v2/discovery.xml"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "start_date=yesterday",
            ["start_date: 'yesterday' is not an ISO 8601 date-time such as 2010-01-01T00:00:00Z"],
        ),
        (
            "end_date=2026-02-30T00:00:00Z",
            ["end_date: '2026-02-30T00:00:00Z' is not a valid date-time"],
        ),
        (
            "start_date=2026-01-01T00:00:00Z&end_date=2026-06-01T00:00:00Z",
            ["start_date to end_date may not span more than 90 days"],
        ),
        (
            "start_date=2026-03-01T00:00:00Z&end_date=2026-02-01T00:00:00Z",
            ["start_date is after end_date"],
        ),
        ("status=pending", ["status 'pending' is neither open nor closed"]),
        ("service_code=nope", ["unknown service_code nope"]),
        ("service_request_id=12;DROP", ["service_request_id 12;DROP is not a request id"]),
        ("page_size=5000", ["page_size must be a whole number from 1 to 1000"]),
    ],
)
async def test_bad_queries_are_400(sqlite_api, query, expected):
    r = await sqlite_api.client.get(f"{V2}/requests.xml?{query}")
    assert await errors(r, 400) == expected


async def test_unknown_request_is_404(sqlite_api):
    for path in ("requests/2026010100001.json", "requests/abc.xml"):
        r = await sqlite_api.client.get(f"{V2}/{path}")
        assert r.status == 404


async def test_only_open311_tickets_are_published(api):
    phone = await api.new_ticket(description="王女士，电话13912345678，家门口路灯不亮")
    r = await api.client.get(f"{V2}/requests.json")
    assert await r.json() == []
    r = await api.client.get(f"{V2}/requests/{phone['number']}.json")
    assert r.status == 404


async def test_default_window_is_90_days_and_at_most_1000_records(api):
    deps, intake = api.app[DEPS], api.app[INTAKE]
    who = Principal("open311:bulk", Role.AGENT)

    def ticket(i: int) -> NewTicket:
        return NewTicket(
            kind="request",
            title=f"路灯 {i}",
            description=f"路灯 {i} 不亮",
            channel="open311",
            principal=who,
            category="urban.street-lights",
            address=f"幸福路{i}号",
        )

    real_clock = deps.clock
    deps.clock = lambda: real_clock() - timedelta(days=100)
    try:
        old = await intake.create(ticket(-1))
    finally:
        deps.clock = real_clock
    await asyncio.gather(*(intake.create(ticket(i)) for i in range(1001)))

    r = await api.client.get(f"{V2}/requests.json")
    items = await r.json()
    assert len(items) == 1000
    assert old["number"] not in {i["service_request_id"] for i in items}
    # a ticket with no Open311 side row shows its own text
    assert items[0]["description"].startswith("路灯 ")
    r = await api.client.get(f"{V2}/requests.json?page=2")
    assert len(await r.json()) == 1
    start = (real_clock() - timedelta(days=101)).isoformat()
    end = (real_clock() - timedelta(days=95)).isoformat()
    r = await api.client.get(f"{V2}/requests.json", params={"start_date": start, "end_date": end})
    assert [i["service_request_id"] for i in await r.json()] == [old["number"]]
    # start_date alone reaches up to now ("defaults to most recent"), not start + 90 days:
    # all 1002, newest first, so the old one closes the second page
    r = await api.client.get(f"{V2}/requests.json", params={"start_date": start, "page": "2"})
    items = await r.json()
    assert len(items) == 2
    assert items[-1]["service_request_id"] == old["number"]


async def test_a_replay_restores_a_side_row_lost_in_a_crash(api):
    import sqlalchemy as sa

    from channels.open311.models import request_t

    key = await key_for(api)
    number = await create(api, street_light(key, media_url="https://img.example/1.jpg"))
    async with api.app[DEPS].db.write() as conn:  # as if we died between the two writes
        await conn.execute(sa.delete(request_t))
    item = await one_request(api, number)
    assert item["media_url"] is None
    assert item["description"].startswith("路灯整晚不亮，晚上很黑\n\n【Open311 补充信息】")
    assert await create(api, street_light(key, media_url="https://img.example/1.jpg")) == number
    item = await one_request(api, number)
    assert item["media_url"] == "https://img.example/1.jpg"
    assert item["description"] == "路灯整晚不亮，晚上很黑"


async def test_a_merged_duplicate_is_closed_and_names_the_ticket_it_joined(api):
    key = await key_for(api)
    first = await create(api, street_light(key))
    dup = await create(api, street_light(key, description="同一盏路灯"))
    await api.move(dup, "merge", {"into": first})
    item = await one_request(api, dup)
    assert (item["status"], item["status_notes"]) == ("closed", f"与工单{first}重复，已合并办理。")


# ---------------------------------------------------------------- real clients' habits


async def side_row(api, number: str) -> dict:  # type: ignore[no-untyped-def]
    from channels.open311.models import request_t

    async with api.app[DEPS].db.read() as conn:
        row = (
            await conn.execute(sa.select(request_t).where(request_t.c.ticket_number == number))
        ).one()
    return dict(row._mapping)


async def test_a_clients_own_attributes_are_kept_for_the_agent_not_refused(api):
    """FixMyStreet posts attribute[...] for each of its extra fields (perllib/Open311.pm,
    _populate_service_request_params), whether or not our definition asks for them."""
    key = await key_for(api)
    fms = {
        "attribute[fixmystreet_id]": "4242",
        "attribute[easting]": "530123",
        "attribute[northing]": "180456",
        "attribute[title]": "Street light out",
        "attribute[description]": "Dark all night\n\nsecond paragraph",
        "attribute[report_url]": "https://www.fixmystreet.com/report/4242",
        "attribute[closest_address]": "12 Xingfu Road",
        "attribute[tags][]": "night",
        "deviceid": "fixmystreet",  # FixMyStreet's spelling of device_id
    }
    number = await create(api, street_light(key, **fms))
    t = await (await api.get(f"/api/v1/tickets/{number}")).json()
    answers, _, extra = t["description"].partition("【客户端附加字段（未核实）】\n")
    assert "路灯现在的状况：不亮" in answers  # the definition's answer, untouched
    assert extra.splitlines()[:3] == ["fixmystreet_id：4242", "easting：530123", "northing：180456"]
    assert "report_url：https://www.fixmystreet.com/report/4242" in extra
    assert "description：Dark all night\n\nsecond paragraph" in extra
    stored = (await side_row(api, number))["attributes"]
    assert stored["LIGHT_STATE"] == "off"
    assert stored["@extra"]["fixmystreet_id"] == "4242"
    assert stored["@extra"]["tags"] == "night"
    assert (await side_row(api, number))["device_id"] == "fixmystreet"
    # the public view shows the client's description, not its extra data
    assert (await one_request(api, number))["description"] == "路灯整晚不亮，晚上很黑"


async def test_a_clients_own_attributes_are_bounded_and_never_replace_answers(sqlite_api):
    key = await key_for(sqlite_api)
    many = {f"attribute[x{i}]": "1" for i in range(31)}
    r = await post(sqlite_api, street_light(key, **many))
    assert await errors(r, 400) == [
        "at most 30 attributes outside the service definition of urban.street-lights are"
        " kept; 31 were sent"
    ]
    r = await post(sqlite_api, street_light(key, **{f"attribute[{'c' * 65}]": "1"}))
    assert await errors(r, 400) == [
        f"attribute['{'c' * 64}...']: an attribute code is one line of at most 64 characters"
    ]
    # a bad answer to the definition is still refused, whatever else comes along
    r = await post(
        sqlite_api,
        street_light(key, **{"attribute[LIGHT_STATE]": "purple", "attribute[mine]": "off"}),
    )
    assert await errors(r, 400) == [
        "attribute[LIGHT_STATE]: 'purple' is not among off, flicker, day-on, damaged"
    ]
    # 30 pass; a value past 2000 characters is cut and says so
    number = await create(
        sqlite_api,
        street_light(
            key, **{f"attribute[x{i}]": "1" for i in range(29)}, **{"attribute[long]": "长" * 2500}
        ),
    )
    stored = (await side_row(sqlite_api, number))["attributes"]["@extra"]
    assert len(stored) == 30
    assert stored["long"] == "长" * 2000 + "…[已截断]"


async def test_a_value_for_an_information_only_attribute_is_kept_as_extra(sqlite_api):
    key = await key_for(sqlite_api)
    form = street_light(key, service_code="utilities.gas-leak", **{"attribute[SAFETY]": "ok"})
    del form["attribute[LIGHT_STATE]"]
    number = await create(sqlite_api, form)
    stored = (await side_row(sqlite_api, number))["attributes"]
    assert stored == {"@extra": {"SAFETY": "ok"}}


@pytest.mark.parametrize("base", [f"{V2}/", f"{V2}//"])
async def test_a_base_url_ending_in_a_slash_still_reaches_every_method(sqlite_api, base):
    """Clients join base URL and "/services.xml": a trailing slash in the configured
    base gives //services.xml, which must not be the hotline's problem+json 404."""
    api = sqlite_api
    key = await key_for(api)
    r = await api.client.get(f"{base}/services.xml")
    assert r.status == 200, await r.text()
    assert xml_of(await r.read()).tag == "services"
    r = await api.client.get(f"{base}/services/urban.street-lights.json?jurisdiction_id=city.gov")
    assert (await r.json())["service_code"] == "urban.street-lights"
    r = await api.client.post(
        f"{base}/requests.json", data=urlencode(street_light(key)), headers=FORM
    )
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    number = item["service_request_id"]
    r = await api.client.get(f"{base}/requests/{number}.json")
    assert [i["service_request_id"] for i in await r.json()] == [number]
    r = await api.client.get(f"{base}/requests.json")
    assert [i["service_request_id"] for i in await r.json()] == [number]
    r = await api.client.get(f"{base}/discovery.json")
    assert (await r.json())["endpoints"][0]["url"].endswith("/open311/v2")
    # the routes' own checks still apply: another jurisdiction, a wrong method, a typo
    r = await api.client.get(f"{base}/services.xml?jurisdiction_id=other.gov")
    assert r.status == 404
    r = await api.client.post(f"{base}/services.json")
    assert await errors(r, 405) == ["POST is not allowed here; use GET"]
    assert r.headers["Allow"] == "GET"
    r = await api.client.get(f"{base}/service_list.json")
    assert await errors(r, 404) == ["no such GeoReport v2 resource; see /open311/v2/discovery.xml"]


async def test_the_base_url_itself_is_the_discovery_document(sqlite_api):
    for path in (V2, f"{V2}/"):
        r = await sqlite_api.client.get(path)
        assert r.status == 200, await r.text()
        assert r.content_type == "text/xml"
        assert xml_of(await r.read()).tag == "discovery"
        r = await sqlite_api.client.get(path, headers={"Accept": "application/json"})
        assert "endpoints" in await r.json()
    r = await sqlite_api.client.post(f"{V2}/")
    assert await errors(r, 404) == ["no such GeoReport v2 resource; see /open311/v2/discovery.xml"]
    # deeper unknown paths are the spec's 404 too; other services' paths are not rewritten
    r = await sqlite_api.client.get(f"{V2}/a/b/c.json")
    assert await errors(r, 404) == ["no such GeoReport v2 resource; see /open311/v2/discovery.xml"]
    r = await sqlite_api.client.get("/api/v1//openapi.json")
    assert r.status == 404
    assert r.content_type != "text/xml"


async def test_lower_case_t_and_z_in_dates_are_read(api):
    key = await key_for(api)
    number = await create(api, street_light(key))
    now = datetime.now(UTC)
    start = (now - timedelta(days=1)).strftime("%Y-%m-%dt%H:%M:%Sz")
    end = (now + timedelta(days=1)).strftime("%Y-%m-%dt%H:%M:%Sz")
    r = await api.client.get(f"{V2}/requests.json?start_date={start}&end_date={end}")
    assert r.status == 200, await r.text()
    assert [i["service_request_id"] for i in await r.json()] == [number]


async def test_half_a_coordinate_next_to_an_address_is_ignored(api):
    key = await key_for(api)
    form = street_light(key)
    del form["long"]
    number = await create(api, form)
    t = await (await api.get(f"/api/v1/tickets/{number}")).json()
    assert t["location"]["address"] == "幸福路12号南门"
    assert (t["location"]["lat"], t["location"]["lon"]) == (None, None)
    form = street_light(key, address_string="", address_id="A-17", description="另一盏")
    del form["lat"]
    await create(api, form)
    form = street_light(key, address_string="")
    del form["lat"]
    r = await post(api, form)
    assert await errors(r, 400) == ["lat and long must be sent together"]


async def test_post_fields_may_come_in_the_query_string_and_the_body_wins(api):
    key = await key_for(api)
    query = urlencode(street_light(key, description="from the query"))
    r = await api.client.post(f"{V2}/requests.json?{query}", data="", headers=FORM)
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    assert (await one_request(api, item["service_request_id"]))["description"] == "from the query"
    # both: the body's value, field by field; the query fills what the body lacks
    query = urlencode({"description": "query text", "attribute[LIGHT_STATE]": "flicker"})
    body = street_light(key, description="body text")
    del body["attribute[LIGHT_STATE]"]
    r = await api.client.post(f"{V2}/requests.json?{query}", data=urlencode(body), headers=FORM)
    assert r.status == 200, await r.text()
    (item,) = await r.json()
    number = item["service_request_id"]
    assert (await one_request(api, number))["description"] == "body text"
    assert (await side_row(api, number))["attributes"] == {"LIGHT_STATE": "flicker"}
    # no field anywhere is still the spec's error
    r = await api.client.post(f"{V2}/requests.json?api_key={key}", data="", headers=FORM)
    assert await errors(r, 400) == ["service_code was not provided"]


async def test_several_photos_are_kept_the_first_as_media_url(sqlite_api):
    """FixMyStreet posts one media_url per photo of a report; refusing the second would
    refuse the report. The first is the request's media_url, the rest reach the agent."""
    key = await key_for(sqlite_api)
    form = [
        *street_light(key).items(),
        ("media_url", "https://photos.example.org/1.jpeg"),
        ("media_url", "https://photos.example.org/2.jpeg"),
        ("media_url", "https://photos.example.org/1.jpeg"),  # a repeat is one photo
        ("media_url", "https://photos.example.org/3.jpeg"),
    ]
    number = await create(sqlite_api, form)
    assert (await one_request(sqlite_api, number))["media_url"] == (
        "https://photos.example.org/1.jpeg"
    )
    t = await (await sqlite_api.get(f"/api/v1/tickets/{number}")).json()
    assert (
        "more media_url：https://photos.example.org/2.jpeg、https://photos.example.org/3.jpeg"
        in t["description"]
    )
    bad = [
        *street_light(key).items(),
        ("media_url", "https://photos.example.org/1.jpeg"),
        ("media_url", "file:///etc/passwd"),
    ]
    r = await post(sqlite_api, bad)
    assert await errors(r, 400) == ["media_url must be an http or https URL"]
    many = [
        *street_light(key).items(),
        *(("media_url", f"https://photos.example.org/{i}.jpeg") for i in range(11)),
    ]
    r = await post(sqlite_api, many)
    assert await errors(r, 400) == ["at most 10 media_url values"]
