"""Emergency words: fire on what matters, stay quiet on harmless words with the same
characters (the rule is in channels/emergency_words.py)."""

from __future__ import annotations

import pytest

from channels.emergency_words import EmergencyRules, answer, lines_of

RULES = EmergencyRules()


def numbers(text: str) -> list[str]:
    return lines_of(RULES.find(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我家厨房着火了", ["119"]),
        ("仓库失火", ["119"]),
        ("楼道起火了快来", ["119"]),
        ("快来救火", ["119"]),
        ("闻到煤气泄漏的味道", ["119"]),
        ("燃气泄漏", ["119"]),
        ("有人受伤流血了", ["120"]),
        ("老人在路边晕倒", ["120"]),
        ("我被抢劫了", ["110"]),
        ("路口发生车祸", ["122"]),
        ("交通事故，两车相撞", ["122"]),
        ("车祸后起火，有人受伤", ["119", "120", "122"]),
        ("火车站着火了", ["119"]),  # a harmless word next to a real one still fires
        ("救火车模型着火了", ["119"]),
        ("There is a FIRE in the building", ["119"]),
        ("I smell gas, maybe a gas leak", ["119"]),
        ("my neighbour is bleeding", ["120"]),
        ("I was robbed at the station", ["110"]),
        ("没有着火", ["119"]),  # negation is not understood on purpose
    ],
)
def test_emergencies_are_recognised(text: str, expected: list[str]) -> None:
    assert numbers(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "火车站附近噪音太大",
        "楼下火锅店油烟扰民",
        "超市卖的火腿过期了",
        "买了个救火车模型，快递丢了",
        "小区灭火器过期了",
        "火柴厂排污",
        "the fireworks last night were too loud",
        "I got fired and need unemployment benefits",
        "the fire hydrant on Main St is leaking",
        "no smoking signs are missing",
        "",
    ],
)
def test_harmless_words_with_the_same_characters_do_not_fire(text: str) -> None:
    assert numbers(text) == []


def test_answer_names_every_number_once() -> None:
    text = answer(RULES.find("着火了，煤气泄漏，有人受伤"))
    assert text.count("119") == 1 and "120" in text
    assert text.startswith("【紧急】")
    en = answer(RULES.find("fire and someone is bleeding"), "en")
    assert "call 119" in en and "call 120" in en


def test_a_city_adds_words_and_harmless_phrases() -> None:
    rules = EmergencyRules.from_mapping({"words": {"medical": ["中暑"]}, "harmless": ["受伤的心"]})
    assert lines_of(rules.find("工地有人中暑")) == ["120"]
    assert lines_of(rules.find("一首受伤的心的歌")) == []
    assert lines_of(rules.find("着火")) == ["119"]  # defaults kept


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown lines"):
        EmergencyRules({"volcano": ["喷发"]})
    with pytest.raises(ValueError, match="one character"):
        EmergencyRules({"fire": ["火"]})
    with pytest.raises(ValueError, match="list of strings"):
        EmergencyRules.from_mapping({"words": {"fire": "着火"}})
