"""The taxonomy file: the packaged default, and what the loader refuses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ticketing.deadlines import Duration, Urgency
from ticketing.taxonomy import (
    DEFAULT_TAXONOMY_PATH,
    DEPARTMENT_LEVELS,
    Taxonomy,
    load_taxonomy,
)

REQUIRED_TOP_LEVEL = [
    "城乡建设",
    "交通出行",
    "市场监管",
    "劳动保障",
    "医疗卫生",
    "教育",
    "公共安全",
    "生态环境",
    "水电气暖",
    "住房保障",
    "民政服务",
    "市民卡服务",
]


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


def category_named(tax: Taxonomy, name: str):
    matches = [c for c in tax.categories if c.name == name]
    assert len(matches) == 1, name
    return matches[0]


# --- the packaged file -------------------------------------------------------------


def test_packaged_file_loads_and_is_the_default(taxonomy):
    assert DEFAULT_TAXONOMY_PATH.is_file()
    assert load_taxonomy(DEFAULT_TAXONOMY_PATH) == taxonomy
    assert taxonomy.departments and taxonomy.categories


def test_at_least_twelve_top_level_categories_including_the_required_ones(taxonomy):
    top = taxonomy.top_categories()
    assert len(top) >= 12
    names = {c.name for c in top}
    for name in REQUIRED_TOP_LEVEL:
        assert name in names


def test_every_top_level_category_has_second_level_children(taxonomy):
    for top in taxonomy.top_categories():
        children = taxonomy.subcategories(top.code)
        assert 3 <= len(children) <= 6, top.code
        for child in children:
            assert child.code.startswith(top.code + ".")
            assert not taxonomy.subcategories(child.code)  # two levels only


def test_parents_come_before_children(taxonomy):
    seen: set[str] = set()
    for cat in taxonomy.categories:
        assert cat.parent_code is None or cat.parent_code in seen
        seen.add(cat.code)
    seen = set()
    for dept in taxonomy.departments:
        assert dept.parent_code is None or dept.parent_code in seen
        seen.add(dept.code)


def test_child_without_department_or_urgency_inherits_from_its_parent(taxonomy):
    urban = category_named(taxonomy, "城市管理")
    lights = category_named(taxonomy, "路灯不亮")
    assert lights.parent_code == urban.code
    assert lights.default_department == urban.default_department == "urban-mgmt"
    assert lights.urgency == urban.urgency == Urgency.NORMAL
    # A child that names its own department keeps it.
    parking = taxonomy.category("transport.illegal-parking")
    assert parking.default_department == "traffic-police"
    assert taxonomy.category("transport").default_department == "transport"


def test_gas_leak_is_an_emergency_and_outages_are_urgent(taxonomy):
    assert taxonomy.category("utilities.gas-leak").urgency == Urgency.EMERGENCY
    assert taxonomy.category("utilities.gas-leak").default_department == "gas"
    power = taxonomy.category("utilities.power-outage")
    assert power.urgency == Urgency.URGENT
    assert power.default_department == "power"
    for code in ("utilities.water-outage", "utilities.gas-outage", "utilities.heating-cold"):
        assert taxonomy.category(code).urgency == Urgency.URGENT
    assert taxonomy.category("emergency-weather.extreme-weather").urgency == Urgency.URGENT


def test_most_categories_are_normal(taxonomy):
    normal = [c for c in taxonomy.categories if c.urgency == Urgency.NORMAL]
    assert len(normal) > len(taxonomy.categories) * 3 // 4


def test_all_limits_parse_and_departments_exist(taxonomy):
    codes = {d.code for d in taxonomy.departments}
    for cat in taxonomy.categories:
        assert cat.default_department in codes
        for limit in (cat.dispatch_limit, cat.feedback_limit):
            if limit is not None:
                Duration.parse(limit)
    assert taxonomy.category("labor.policy").feedback_limit == "7wd"
    assert taxonomy.category("labor.wage-arrears").feedback_limit is None


def test_department_tree(taxonomy):
    assert taxonomy.department("city").level == "city"
    assert all(d.level in DEPARTMENT_LEVELS for d in taxonomy.departments)
    districts = [d for d in taxonomy.departments if d.level == "district"]
    assert len(districts) >= 4
    for code in ("housing", "urban-mgmt", "gas", "citizen-card", "weather"):
        agency = taxonomy.department(code)
        assert agency.level == "agency"
        assert agency.parent_code == "city"
        assert agency.district is None


def test_each_district_has_one_fallback_and_streets_inherit_the_district(taxonomy):
    districts = [d for d in taxonomy.departments if d.level == "district"]
    for district in districts:
        assert district.district
        below = [d for d in taxonomy.departments if d.parent_code == district.code]
        assert all(d.district == district.district for d in below)
        assert len([d for d in below if d.level == "street"]) >= 2
        fallbacks = [d for d in taxonomy.departments if d.is_fallback]
        mine = [d for d in fallbacks if d.district == district.district]
        assert len(mine) == 1
        assert taxonomy.fallback_for(district.district) == mine[0]
    assert taxonomy.department("d-east-xinhua").district == "东城区"
    assert not any(d.is_fallback and d.district is None for d in taxonomy.departments)


# --- validation ----------------------------------------------------------------------

GOOD_DEPARTMENTS = """\
departments:
  - code: city
    name: 示例市
    level: city
    children:
      - code: d-one
        name: 一区
        level: district
        children:
          - {code: d-one-street, name: 一街道, level: street}
          - {code: d-one-office, name: 一区办, level: agency, is_fallback: true}
      - {code: water, name: 水务集团, level: agency}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def with_categories(categories: str) -> str:
    return GOOD_DEPARTMENTS + "categories:\n" + textwrap.dedent(categories)


def test_small_valid_file_loads(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - code: utilities
              name: 水电气暖
              department: water
              urgency: urgent
              children:
                - {code: utilities.water-outage, name: 停水}
                - {code: utilities.billing, name: 水费咨询, urgency: normal, feedback_limit: 7wd}
            """),
    )
    tax = load_taxonomy(path)
    outage = tax.category("utilities.water-outage")
    assert outage.default_department == "water"
    assert outage.urgency == Urgency.URGENT
    assert tax.category("utilities.billing").feedback_limit == "7wd"
    assert tax.department("d-one").district == "一区"  # defaults to the district's name
    assert tax.department("d-one-street").district == "一区"
    assert tax.fallback_for("一区").code == "d-one-office"


def assert_refused(path: Path, *needles: str) -> None:
    with pytest.raises(ValueError) as info:
        load_taxonomy(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_duplicate_category_code_is_refused(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - code: water
              name: 供水
              department: water
              children:
                - {code: water.outage, name: 停水}
                - {code: water.outage, name: 停水二}
            """),
    )
    assert_refused(path, "water.outage", "duplicate")


def test_duplicate_department_code_is_refused(tmp_path):
    text = GOOD_DEPARTMENTS.replace(
        "      - {code: water, name: 水务集团, level: agency}\n",
        "      - {code: water, name: 水务集团, level: agency}\n"
        "      - {code: water, name: 水务公司, level: agency}\n",
    )
    path = write(tmp_path, text + "categories:\n  - {code: a, name: 甲, department: water}\n")
    assert_refused(path, "'water'", "duplicate")


def test_unknown_department_is_refused(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - code: traffic
              name: 交通
              department: water
              children:
                - {code: traffic.parking, name: 违章停车, department: no-such-dept}
            """),
    )
    assert_refused(path, "traffic.parking", "no-such-dept")


def test_bad_urgency_is_refused(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - code: utilities
              name: 水电气暖
              department: water
              children:
                - {code: utilities.gas-leak, name: 燃气泄漏, urgency: critical}
            """),
    )
    assert_refused(path, "utilities.gas-leak", "critical")


@pytest.mark.parametrize("limit", ["15d", "2 hours", "0h", "24"])
def test_bad_limit_is_refused(tmp_path, limit):
    path = write(
        tmp_path,
        with_categories(f"""\
            - code: labor
              name: 劳动保障
              department: water
              children:
                - {{code: labor.policy, name: 政策咨询, feedback_limit: "{limit}"}}
            """),
    )
    assert_refused(path, "labor.policy", "feedback_limit")


def test_non_text_limit_is_refused(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - {code: labor, name: 劳动保障, department: water, dispatch_limit: 24}
            """),
    )
    assert_refused(path, "'labor'", "dispatch_limit")


def test_missing_fallback_is_refused(tmp_path):
    text = GOOD_DEPARTMENTS.replace(", is_fallback: true", "")
    path = write(tmp_path, text + "categories:\n  - {code: a, name: 甲, department: water}\n")
    assert_refused(path, "d-one", "fallback")


def test_two_fallbacks_in_one_district_are_refused(tmp_path):
    text = GOOD_DEPARTMENTS.replace(
        "          - {code: d-one-street, name: 一街道, level: street}",
        "          - {code: d-one-street, name: 一街道, level: street, is_fallback: true}",
    )
    path = write(tmp_path, text + "categories:\n  - {code: a, name: 甲, department: water}\n")
    assert_refused(path, "d-one", "d-one-street", "d-one-office")


def test_unknown_level_is_refused(tmp_path):
    text = GOOD_DEPARTMENTS.replace("name: 一街道, level: street", "name: 一街道, level: village")
    path = write(tmp_path, text + "categories:\n  - {code: a, name: 甲, department: water}\n")
    assert_refused(path, "d-one-street", "village")


def test_child_code_must_extend_its_parent(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - code: urban
              name: 城市管理
              department: water
              children:
                - {code: lights, name: 路灯不亮}
            """),
    )
    assert_refused(path, "'lights'", "urban.")


def test_misspelt_key_is_refused(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - {code: urban, name: 城市管理, departement: water}
            """),
    )
    assert_refused(path, "'urban'", "departement")


def test_key_written_twice_is_refused(tmp_path):
    path = write(
        tmp_path,
        with_categories("""\
            - code: urban
              name: 城市管理
              department: water
              urgency: normal
              urgency: emergency
            """),
    )
    assert_refused(path, "duplicate key 'urgency'")


def test_top_level_category_needs_a_department(tmp_path):
    path = write(tmp_path, with_categories("- {code: urban, name: 城市管理}\n"))
    assert_refused(path, "'urban'", "department")


def test_missing_file_is_a_value_error(tmp_path):
    assert_refused(tmp_path / "absent.yaml", "cannot read")
