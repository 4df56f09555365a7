"""The pure parts of the Open311 channel: definitions file, forms, XML writer, views."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from channels.open311.definitions import load_definitions
from channels.open311.forms import (
    Open311Error,
    check_jurisdiction,
    legacy_charset,
    parse_datetime,
    parse_multipart,
    parse_new_request,
    parse_pairs,
    parse_request_query,
    with_query_fields,
)
from channels.open311.render import to_json, to_xml
from channels.open311.services import build_services
from channels.open311.submit import request_digest
from hotline.settings import SettingsError, load_settings

SHANGHAI = ZoneInfo("Asia/Shanghai")
CATEGORIES = {
    "urban": {"code": "urban", "name": "城市管理", "parent_code": None, "active": True},
    "urban.street-lights": {
        "code": "urban.street-lights",
        "name": "路灯不亮",
        "parent_code": "urban",
        "active": True,
    },
    "urban.garbage": {
        "code": "urban.garbage",
        "name": "垃圾清运",
        "parent_code": "urban",
        "active": True,
    },
    "urban.old": {"code": "urban.old", "name": "停用", "parent_code": "urban", "active": False},
}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "services.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_packaged_definitions_load_and_cover_real_categories():
    from ticketing.taxonomy import load_taxonomy

    defs = load_definitions()
    codes = {c.code for c in load_taxonomy().categories}
    assert set(defs.services) <= codes  # no typo'd category in services.yaml
    assert set(defs.hidden) <= codes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: {a: {colour: red}}", "services.a: unknown keys ['colour']"),
        (
            "services: {a: {attributes: [{code: X, datatype: singlevaluelist}]}}",
            "a singlevaluelist needs values",
        ),
        (
            "services: {a: {attributes: [{code: X, datatype: singlevaluelist, "
            "values: [{key: off, name: 关}]}]}}",
            "value key False must be text (quote it)",
        ),
        (
            "services: {a: {attributes: [{code: X, datatype: colour}]}}",
            "datatype must be one of",
        ),
        (
            "services: {a: {attributes: [{code: 'bad code', datatype: string}]}}",
            "code must be 1-64 ASCII",
        ),
        (
            "services: {a: {attributes: [{code: X, datatype: string, variable: false, "
            "required: true, description: d}]}}",
            "cannot be required",
        ),
        ("status_notes: {lost: x}", "unknown status 'lost'"),
        ("status_notes: {new: '{who}'}", "bad template"),
        ("defaults: {kind: rant}", "kind must be one of"),
        ("services: {a: {keywords: ['a,b']}}", "keywords must be a list of words without commas"),
    ],
)
def test_a_bad_definitions_file_fails_at_start_naming_the_entry(tmp_path, text, message):
    with pytest.raises(ValueError, match=r"services\.yaml") as exc:
        load_definitions(write(tmp_path, text))
    assert message in str(exc.value)


def test_services_are_active_leaves_with_their_group():
    services = build_services(CATEGORIES, load_definitions())
    assert list(services) == ["urban.garbage", "urban.street-lights"]
    assert services["urban.garbage"].group == "城市管理"
    assert services["urban.garbage"].metadata is True


def test_multivalue_answers_keep_the_definitions_order_and_drop_repeats():
    services = build_services(CATEGORIES, load_definitions())
    pairs = parse_pairs(
        "service_code=urban.garbage&address_id=7"
        "&attribute%5BWASTE_TYPE%5D%5B%5D=construction&attribute[WASTE_TYPE][]=household"
        "&attribute[WASTE_TYPE]=construction"
    )
    req = parse_new_request(pairs, services, SHANGHAI)
    assert req.attributes == {"WASTE_TYPE": ["household", "construction"]}
    bad = parse_pairs("service_code=urban.garbage&address_id=7&attribute[WASTE_TYPE][]=gold")
    with pytest.raises(Open311Error) as exc:
        parse_new_request(bad, services, SHANGHAI)
    assert exc.value.status == 400
    assert exc.value.descriptions == [
        "attribute[WASTE_TYPE]: gold not among household, kitchen, bulky, construction"
    ]


def test_dates_follow_the_w3c_profile_and_default_to_the_city_zone():
    assert parse_datetime("2010-01-01T00:00:00Z", SHANGHAI) == datetime(2010, 1, 1, tzinfo=UTC)
    assert parse_datetime("1994-11-05T08:15:30-05:00", SHANGHAI) == datetime(
        1994, 11, 5, 13, 15, 30, tzinfo=UTC
    )
    assert parse_datetime("2026-11-23", SHANGHAI) == datetime(2026, 11, 22, 16, tzinfo=UTC)
    assert parse_datetime("2026-11-23T08:00", SHANGHAI) == datetime(2026, 11, 23, 0, tzinfo=UTC)
    # the W3C note's reduced precisions, "YYYY" and "YYYY-MM", are its first day
    assert parse_datetime("2026-11", SHANGHAI) == datetime(2026, 10, 31, 16, tzinfo=UTC)
    assert parse_datetime("2026", SHANGHAI) == datetime(2025, 12, 31, 16, tzinfo=UTC)
    bad_ones = ("yesterday", "2026-13-01", "2026-11-23T25:00:00Z", "1e9", "", "2026-11-23T")
    for bad in (*bad_ones, "2026-13", "202", "20261", "2026-1", "2026-11-"):
        with pytest.raises(ValueError):
            parse_datetime(bad, SHANGHAI)


def test_the_retry_digest_ignores_order_key_and_blanks():
    a = request_digest([("api_key", "k1"), ("service_code", "x"), ("lat", "1"), ("email", "")])
    b = request_digest([("lat", "1"), ("service_code", "x"), ("api_key", "k2")])
    c = request_digest([("lat", "2"), ("service_code", "x")])
    assert a == b != c


def test_xml_is_well_formed_whatever_the_text():
    hostile = "<tag> & ]]> \x00\x0b\ud7ff\ufffe 😀 \u2028"
    body = to_xml("service_requests", [{"description": hostile, "lat": 1.5, "ok": True}])
    root = ET.fromstring(body)
    text = root.findtext("request/description") or ""
    assert text.startswith("<tag> & ]]> \ufffd\ufffd")
    assert "😀" in text
    assert root.findtext("request/lat") == "1.5"
    assert root.findtext("request/ok") == "true"
    assert to_json([{"a": None, "b": "路灯"}]) == '[{"a":null,"b":"路灯"}]'.encode()


def test_multipart_parts_are_utf8_or_their_own_legacy_charset_and_bounded():
    def body(*parts: bytes) -> bytes:
        return b"".join(b"--B\r\n" + p + b"\r\n" for p in parts) + b"--B--\r\n"

    named = b'Content-Disposition: form-data; name="%s"'
    gbk = named % b"description" + b"\r\nContent-Type: text/plain; charset=GBK\r\n\r\n"
    raw = body(
        named % b"service_code" + b"\r\n\r\nurban.garbage",
        gbk + "路灯不亮".encode("gbk"),
        named % b"address_string" + b"\r\n\r\n" + "幸福路".encode(),
    )
    assert parse_multipart(raw, "multipart/form-data; boundary=B") == [
        ("service_code", "urban.garbage"),
        ("description", "路灯不亮"),
        ("address_string", "幸福路"),
    ]
    with pytest.raises(Open311Error) as exc:
        parse_multipart(
            body(named % b"description" + b"\r\n\r\n\xff\xfe"), "multipart/form-data; boundary=B"
        )
    assert exc.value.descriptions == ["description is not valid UTF-8"]
    many = body(*(named % b"f%d" % i + b"\r\n\r\n1" for i in range(201)))
    with pytest.raises(Open311Error) as exc:
        parse_multipart(many, "multipart/form-data; boundary=B")
    assert exc.value.descriptions == ["the form has more than 200 fields"]
    assert [
        legacy_charset(c) for c in ("ISO-8859-1", "GB2312", "utf-8", "utf-16", "x-nope", None)
    ] == [
        "latin-1",
        "gb18030",
        None,
        None,
        None,
        None,
    ]


def test_jurisdiction_is_ours_in_any_case_or_absent_else_404():
    check_jurisdiction(
        "city.gov", [], [("jurisdiction_id", "")], [("jurisdiction_id", " City.GOV ")]
    )
    check_jurisdiction(
        "city.gov", [("jurisdiction_id", "city.gov"), ("jurisdiction_id", "CITY.gov")]
    )
    with pytest.raises(Open311Error) as err:
        check_jurisdiction(
            "city.gov", [("jurisdiction_id", "city.gov")], [("jurisdiction_id", "x.org")]
        )
    assert err.value.status == 404
    assert err.value.descriptions == [
        "jurisdiction_id 'x.org' was not found; this endpoint serves city.gov"
    ]


def test_the_jurisdiction_setting_is_a_domain_defaulting_to_the_city_code(monkeypatch):
    monkeypatch.delenv("HOTLINE_OPEN311_JURISDICTION", raising=False)
    monkeypatch.delenv("HOTLINE_CITY_CODE", raising=False)
    assert load_settings().open311_jurisdiction == "city.gov"  # the spec's own example
    assert load_settings(city_code="HZ").open311_jurisdiction == "hz.gov"
    assert (
        load_settings(open311_jurisdiction=" Hangzhou.GOV.cn ").open311_jurisdiction
        == "hangzhou.gov.cn"
    )
    monkeypatch.setenv("HOTLINE_OPEN311_JURISDICTION", "sfgov.org")
    assert load_settings().open311_jurisdiction == "sfgov.org"
    for bad in ("city gov", "-city.gov", "city..gov", "city.gov/", "a_b.gov", "城市.cn", "x" * 101):
        with pytest.raises(SettingsError, match="HOTLINE_OPEN311_JURISDICTION"):
            load_settings(open311_jurisdiction=bad)
    monkeypatch.delenv("HOTLINE_OPEN311_JURISDICTION")
    with pytest.raises(SettingsError, match="made from HOTLINE_CITY_CODE"):
        load_settings(city_code="杭州")


def test_t_and_z_may_be_lower_case_as_rfc_3339_allows():
    want = datetime(2010, 1, 1, tzinfo=UTC)
    for raw in ("2010-01-01t00:00:00z", "2010-01-01T00:00:00z", "2010-01-01t08:00:00+08:00"):
        assert parse_datetime(raw, SHANGHAI) == want
    assert parse_datetime("2010-01-01t08:00", SHANGHAI) == want  # the city's zone
    for bad in ("2010-01-01x00:00:00Z", "2010-01-01T00:00:00y", "2010-01-01tt00:00"):
        with pytest.raises(ValueError):
            parse_datetime(bad, SHANGHAI)


def test_a_start_date_alone_reaches_up_to_now():
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)

    def window(query: str) -> tuple[datetime | None, datetime | None]:
        q = parse_request_query(parse_pairs(query), (), SHANGHAI, now)
        return q.start, q.end

    # "When not specified, the range defaults to most recent 90 days"
    assert window("") == (now - timedelta(days=90), now)
    assert window("start_date=2026-11-01T00:00:00Z") == (datetime(2026, 11, 1, tzinfo=UTC), now)
    # the 90-day limit is for a range given with both ends; alone, start_date is "since"
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    assert window("start_date=2026-01-01T00:00:00Z") == (long_ago, now)
    # a start still to come is an empty window, not an error about an end never sent
    future = datetime(2027, 1, 1, tzinfo=UTC)
    assert window("start_date=2027-01-01T00:00:00Z") == (future, future)
    end = datetime(2026, 6, 1, tzinfo=UTC)
    assert window("end_date=2026-06-01T00:00:00Z") == (end - timedelta(days=90), end)
    with pytest.raises(Open311Error, match="may not span more than 90 days"):
        window("start_date=2026-01-01T00:00:00Z&end_date=2026-06-01T00:00:00Z")
    with pytest.raises(Open311Error, match="start_date is after end_date"):
        window("start_date=2027-01-01T00:00:00Z&end_date=2026-06-01T00:00:00Z")


def test_post_fields_from_the_query_string_fill_only_what_the_body_lacks():
    body = parse_pairs("service_code=a&description=&attribute[X][]=1&attribute[X][]=2")
    query = parse_pairs("service_code=b&description=q&attribute[X][]=3&attribute[Y]=4&api_key=k")
    assert with_query_fields(body, query) == [
        *body,
        ("description", "q"),  # empty in the body is no value
        ("attribute[Y]", "4"),
        ("api_key", "k"),
    ]
    assert with_query_fields([], query) == query


def test_attributes_outside_the_definition_are_extra_data_apart_from_the_answers():
    services = build_services(CATEGORIES, load_definitions())
    pairs = parse_pairs(
        "service_code=urban.garbage&address_id=7&attribute[WASTE_TYPE][]=household"
        "&attribute[fixmystreet_id]=99&attribute[photos][]=a&attribute[photos][]=b"
        "&attribute[empty]="
    )
    req = parse_new_request(pairs, services, SHANGHAI)
    assert req.attributes == {"WASTE_TYPE": ["household"]}
    assert req.extra_attributes == {"fixmystreet_id": "99", "photos": ["a", "b"]}
    bad = parse_pairs(
        "service_code=urban.garbage&address_id=7&attribute[WASTE_TYPE]=bulky&attribute[a%0Ab]=1"
    )
    with pytest.raises(Open311Error) as exc:
        parse_new_request(bad, services, SHANGHAI)
    assert exc.value.descriptions == [
        "attribute['a\\nb']: an attribute code is one line of at most 64 characters"
    ]
