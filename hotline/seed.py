"""Demo data: the default taxonomy, a few staff users and tickets in every state,
so a new user sees a living system. Safe to run twice (users and tickets are
only added when missing)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from citizen_card import service as svc
from citizen_card.service import CardDeps
from hotline.auth import UserExists, create_user
from ticketing.catalog import seed_from_taxonomy
from ticketing.handlers import Deps, MoveTicket, move_ticket, ticket_t
from ticketing.intake import Intake, NewTicket
from ticketing.lifecycle import Action, Role
from ticketing.ports import Principal
from ticketing.taxonomy import load_taxonomy

DEMO_PASSWORD = "demo-12345"
USERS = [
    ("agent", Role.AGENT, None, "话务员 小王"),
    ("supervisor", Role.SUPERVISOR, None, "值班长 李主任"),
    ("admin", Role.ADMIN, None, "系统管理员"),
    ("urban", Role.DEPARTMENT, "urban-mgmt", "城市管理局 承办人"),
    ("water", Role.DEPARTMENT, "water", "水务集团 承办人"),
]

TICKETS: list[dict[str, Any]] = [
    {
        "kind": "complaint",
        "title": "小区门口路灯不亮",
        "category": "urban.street-lights",
        "description": "东城区新华街道幸福小区南门的路灯已经坏了一周，晚上很黑。",
        "address": "幸福小区南门",
        "district": "东城区",
        "phone": "13812345678",
        "moves": [],
    },
    {
        "kind": "request",
        "title": "停水咨询",
        "category": "utilities.water-outage",
        "description": "西城区和平路一带从早上开始停水，什么时候恢复？",
        "district": "西城区",
        "phone": "13987654321",
        "moves": [("agent", Action.DISPATCH, {})],
    },
    {
        "kind": "complaint",
        "title": "夜间施工噪音扰民",
        "category": "urban.noise",
        "description": "工地晚上十一点后仍在施工，噪音很大。",
        "district": "南湖区",
        "phone": "+8615011112222",
        "moves": [
            ("agent", Action.DISPATCH, {"department": "urban-mgmt"}),
            ("urban", Action.SIGN, {}),
        ],
    },
    {
        "kind": "consultation",
        "title": "市民卡挂失怎么办理",
        "category": "citizen-card.loss-replacement",
        "description": "市民卡丢了，怎么挂失？",
        "district": None,
        "phone": None,
        "moves": [
            (
                "agent",
                Action.ANSWER,
                {"answer": "可拨打12345按提示挂失，或在城市APP“市民卡”中挂失，挂失即时生效。"},
            )
        ],
    },
    {
        "kind": "suggestion",
        "title": "建议增加公交班次",
        "category": "transport.bus",
        "description": "早高峰12路公交太挤，建议增加班次。",
        "district": "北岭区",
        "phone": "13700001111",
        "moves": [("agent", Action.DISPATCH, {"department": "transport"})],
    },
]


DEMO_RESIDENTS = [
    # GB 11643's own sample number, and a second valid one
    ("张三丰", "11010519491231002X", "13812345678", "senior"),
    ("李小梅", "110105199003070017", "13987654321", "adult"),
]


async def seed_cards(card: CardDeps) -> int:
    """Two residents with cards, PIN 246813, and some money in their wallets."""
    added = 0
    for name, id_number, phone, concession in DEMO_RESIDENTS:
        if await svc.find_resident_by_id_number(card, id_number) is not None:
            continue
        r = await svc.register_resident(
            card, name=name, id_number=id_number, phone=phone, verified_source="demo"
        )
        await svc.issue_card(
            card,
            r.id,
            actor="seed",
            concession=concession,
            pin="246813",
            health_card_no=f"HC{r.id:08d}",
        )
        await card.ledger.top_up(r.wallet_account_id, 10_000, f"demo-topup-{r.id}")
        added += 1
    return added


async def seed_demo(deps: Deps, card: CardDeps | None = None) -> dict[str, int]:
    added = await seed_from_taxonomy(deps.db, load_taxonomy())
    await deps.catalog.reload(deps.db)
    users = 0
    for username, role, dept, name in USERS:
        try:
            await create_user(deps, username, DEMO_PASSWORD, role, dept, name)
            users += 1
        except UserExists:
            pass
    async with deps.db.read() as conn:
        existing = set((await conn.execute(sa.select(ticket_t.c.title))).scalars().all())
    people = {u: Principal(u, r, d) for u, r, d, _ in USERS}
    intake = Intake(deps)
    await intake.start()
    created = 0
    try:
        for spec in TICKETS:
            if spec["title"] in existing:
                continue
            view = await intake.create(
                NewTicket(
                    kind=spec["kind"],
                    title=spec["title"],
                    description=spec["description"],
                    channel="phone",
                    principal=people["agent"],
                    category=spec["category"],
                    contact_name="市民",
                    contact_phone=spec["phone"],
                    address=spec.get("address"),
                    district=spec["district"],
                )
            )
            for who, action, payload in spec["moves"]:
                await move_ticket(deps, MoveTicket(view["number"], action, people[who], payload))
            created += 1
    finally:
        await intake.stop()
    residents = await seed_cards(card) if card is not None else 0
    return {"categories": added, "users": users, "tickets": created, "residents": residents}
