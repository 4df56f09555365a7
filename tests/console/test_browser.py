"""The console in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright), against the whole service started on a free port.

The `browser` fixture is in conftest.py (see browser_kit.py).
Screenshots of each main screen land in the test's tmp_path.
"""

from __future__ import annotations

import re
import time

import sqlalchemy as sa

from hotline.appkeys import DEPS
from tests.console.browser_kit import login
from ticketing.handlers import ticket_t


async def test_a_ticket_created_elsewhere_appears_in_the_queue_within_a_second(
    browser, service, tmp_path
):
    page = await login(browser, service, "agent", tmp_path)
    assert await page.inner_text(".brand") == "12345 工作台"
    # no call on this agent (or no phone line at all): the panel says which, buttons off
    phone = any(r.resource.canonical == "/api/v1/agents/me" for r in service.app.router.routes())
    status = "暂无来电" if phone else "电话线路未接入"
    assert await page.inner_text("#call-status") == status
    assert await page.is_disabled("#call-panel button[data-line='119']")
    emergency = await service.new_ticket(title="燃气泄漏", urgency="emergency")
    start = time.monotonic()
    await page.wait_for_selector(
        f'#queue li[data-key="ticket:{emergency["number"]}"]', timeout=1000
    )
    assert time.monotonic() - start < 1.0
    normal = await service.new_ticket(title="噪音扰民")
    await page.wait_for_selector(f'#queue li[data-key="ticket:{normal["number"]}"]', timeout=1000)
    keys = await page.eval_on_selector_all("#queue li", "els => els.map(e => e.dataset.key)")
    assert keys[0] == f"ticket:{emergency['number']}"  # emergencies pinned on top
    assert "紧急" in await page.inner_text("#queue li.emergency")
    await page.screenshot(path=str(tmp_path / "workspace.png"), full_page=True)
    assert page.errors == []


async def test_agent_dispatches_and_the_department_signs_and_replies(browser, service, tmp_path):
    page = await login(browser, service, "agent")
    await page.select_option("#f-kind", "complaint")
    await page.fill("#f-category-search", "路灯")
    assert await page.input_value("#f-category") == "urban.street-lights"
    await page.fill("#f-title", "幸福路路灯不亮")
    await page.fill("#f-description", "幸福路 12 号门前三盏路灯整晚不亮")
    await page.fill("#f-address", "幸福路 12 号")
    await page.fill("#f-lat", "39.91")
    await page.fill("#f-lon", "116.40")
    await page.keyboard.press("Alt+D")  # dispatch, by keyboard
    await page.wait_for_selector("#dispatch-dialog:not([hidden])")
    await page.wait_for_selector("#d-preview dd")
    preview = await page.inner_text("#d-preview")
    assert "示例市城市管理局" in preview and "按分类默认" in preview
    due_shown = await page.get_attribute("#d-preview", "data-due")
    assert due_shown
    await page.screenshot(path=str(tmp_path / "dispatch.png"), full_page=True)
    await page.click("#d-confirm")
    await page.wait_for_selector("#dispatch-dialog", state="hidden")
    async with service.app[DEPS].db.read() as conn:
        row = (
            await conn.execute(sa.select(ticket_t).where(ticket_t.c.title == "幸福路路灯不亮"))
        ).one()
    assert row.status == "dispatched"
    assert row.lead_department == "urban-mgmt"
    assert (row.lat, row.lon, row.address) == (39.91, 116.40, "幸福路 12 号")
    # the deadline shown before confirming is the one the ticket got
    assert row.feedback_due_at.isoformat().replace("+00:00", "Z")[:19] == due_shown[:19]
    assert page.errors == []

    dept = await login(browser, service, "urban")
    row_sel = f'#inbox-rows tr[data-number="{row.number}"]'
    await dept.wait_for_selector(row_sel)
    await dept.screenshot(path=str(tmp_path / "inbox.png"), full_page=True)
    await dept.click(row_sel)
    await dept.wait_for_selector("#inbox-detail:not([hidden])")
    assert await dept.is_disabled("[data-move='reply']")  # sign first
    await dept.click("[data-move='sign']")
    await dept.wait_for_selector("[data-move='reply']:not([disabled])")
    await dept.fill("#i-text", "已更换灯泡，恢复照明。")
    await dept.click("[data-move='reply']")
    await dept.wait_for_selector(row_sel, state="detached")
    async with service.app[DEPS].db.read() as conn:
        done = (
            await conn.execute(sa.select(ticket_t).where(ticket_t.c.number == row.number))
        ).one()
    assert done.status == "replied"
    assert done.reply_text == "已更换灯泡，恢复照明。"
    # and the reply lands in the agents' queue for follow-up, live
    await page.wait_for_selector(f'#queue li[data-key="ticket:{row.number}"]', timeout=2000)
    assert "待回访" in await page.inner_text(f'#queue li[data-key="ticket:{row.number}"]')
    assert dept.errors == []


async def test_knowledge_base_edit_search_and_two_keystroke_insert(browser, service, tmp_path):
    sup = await login(browser, service, "supervisor")
    await sup.click("#tabs button[data-view='kb']")
    await sup.fill("#k-question", "路灯不亮怎么报修？")
    await sup.fill("#k-answer", "请拨打12345或在市民App提交，城管部门两个工作日内修复。")
    await sup.select_option("#k-owner", "urban-mgmt")
    await sup.click("#kb-form button[type='submit']")
    await sup.wait_for_selector("#kb-list li")
    await sup.screenshot(path=str(tmp_path / "knowledge-base.png"), full_page=True)

    agent = await login(browser, service, "agent")
    await agent.keyboard.press("/")
    assert await agent.evaluate("document.activeElement.id") == "kb-q"
    await agent.keyboard.type("路灯")
    await agent.wait_for_selector("#kb-results li")
    await agent.click("#f-answer")
    await agent.keyboard.press("Alt+1")
    assert (
        await agent.input_value("#f-answer")
        == "请拨打12345或在市民App提交，城管部门两个工作日内修复。"
    )
    assert agent.errors == []


async def test_supervisor_wall_numbers_match_the_database(browser, service, tmp_path):
    for i in range(3):
        await service.new_ticket(title=f"投诉{i}", channel="wechat" if i else "phone")
    page = await login(browser, service, "supervisor")
    await page.click("#tabs button[data-view='wall']")
    await page.wait_for_selector("[data-testid='tile-volume_today'] .v")
    async with service.app[DEPS].db.read() as conn:
        total = (await conn.execute(sa.select(sa.func.count()).select_from(ticket_t))).scalar_one()
        wechat = (
            await conn.execute(sa.select(sa.func.count()).where(ticket_t.c.channel == "wechat"))
        ).scalar_one()
    assert await page.inner_text("[data-testid='tile-volume_today'] .v") == str(total)
    assert await page.inner_text("[data-testid='tile-service_level'] .v") == "—"
    bars = await page.query_selector_all("#chart-channel rect.bar")
    assert len(bars) == 2
    labels = await page.text_content("#chart-channel svg") or ""
    assert re.search(r"微信", labels) and str(wechat) in labels
    await page.focus("#chart-channel rect.bar >> nth=0")
    await page.keyboard.press("Enter")  # drill down by keyboard
    await page.wait_for_selector("#drill:not([hidden]) tbody tr")
    rows = await page.query_selector_all("#drill tbody tr")
    assert len(rows) == wechat  # the busiest channel first: wechat, 2 tickets
    await page.screenshot(path=str(tmp_path / "wall.png"), full_page=True)
    assert page.errors == []


async def test_help_overlay_english_switch_and_labels(browser, service, tmp_path):
    page = await login(browser, service, "agent")
    await page.keyboard.press("?")
    await page.wait_for_selector("#help:not([hidden])")
    assert "Alt+1 … Alt+9" in await page.inner_text("#help-list")
    await page.screenshot(path=str(tmp_path / "help.png"))
    await page.keyboard.press("Escape")
    await page.wait_for_selector("#help", state="hidden")
    await page.click("#app-view .lang-toggle")
    await page.wait_for_selector("html[lang='en']")
    assert await page.inner_text("#queue-title") == "Queue (0)"
    phone = any(r.resource.canonical == "/api/v1/agents/me" for r in service.app.router.routes())
    status = "No call" if phone else "Phone line not connected"
    assert await page.inner_text("#call-status") == status
    # every visible form control has a label (accessibility basics)
    unlabeled = await page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea'))
            .filter(e => e.offsetParent !== null)
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.id)"""
    )
    assert unlabeled == []
    assert page.errors == []


async def test_director_reads_the_performance_report_and_exports_it(browser, service, tmp_path):
    """The figures on the screen are the API's; the CSV link carries the chosen period."""
    done = await service.new_ticket(title="路灯不亮", channel="wechat")
    await service.move(done["number"], "dispatch", {"department": "urban-mgmt"})
    await service.move(done["number"], "sign", as_="urban")
    await service.move(done["number"], "reply", {"reply": "已修复"}, as_="urban")
    await service.move(done["number"], "follow-up", {"satisfaction": "satisfied"})
    await service.new_ticket(title="噪音扰民")
    page = await login(browser, service, "supervisor")
    await page.click("#tabs button[data-view='report']")
    await page.wait_for_selector("[data-testid='report-table'] tfoot")
    total = "[data-testid='report-table'] tfoot"
    assert await page.inner_text(f"{total} [data-col='received']") == "2"
    assert await page.inner_text(f"{total} [data-col='satisfaction_rate']") == "100.0%"
    assert await page.inner_text(f"{total} [data-col='on_time_completion_rate']") == "100.0%"
    rows = await page.eval_on_selector_all(
        "[data-testid='report-table'] tbody th", "els => els.map(e => e.textContent)"
    )
    assert sorted(rows) == sorted(["示例市城市管理局", "热线中心直办"])  # names, not codes
    await page.select_option("#r-by", "channel")
    await page.click("#report-form button[type='submit']")
    await page.wait_for_selector("[data-testid='report-table'] tbody th:text('微信')")
    href = await page.get_attribute("#r-csv", "href")
    assert href and "format=csv" in href and "by=channel" in href
    csv_text = await page.evaluate(
        "async (u) => (await fetch(u, {credentials: 'same-origin'})).text()", href
    )
    assert csv_text.splitlines()[-1].startswith("total,合计,2,")
    await page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert page.errors == []


async def test_changing_my_password_from_the_console(browser, service, tmp_path):
    page = await login(browser, service, "agent")
    await page.click("#password-button")
    await page.wait_for_selector("#password:not([hidden])")
    await page.fill("#pw-current", "test-password-1")
    await page.fill("#pw-new", "night shift 2026")
    await page.fill("#pw-again", "night shift 2025")
    await page.click("#password-form button[type='submit']")
    assert await page.inner_text("#pw-error") == "两次输入的新密码不一致"
    await page.fill("#pw-again", "night shift 2026")
    await page.screenshot(path=str(tmp_path / "password.png"), full_page=True)
    await page.click("#password-form button[type='submit']")
    await page.wait_for_selector("#password", state="hidden")
    await page.wait_for_selector(".toast:text('密码已修改')")
    r = await service.client.post(
        "/api/v1/auth/login", json={"username": "agent", "password": "night shift 2026"}
    )
    assert r.status == 200
    assert page.errors == []


async def test_admin_manages_staff_accounts_from_the_console(browser, service, tmp_path):
    for _ in range(6):  # transport locks itself out
        await service.client.post(
            "/api/v1/auth/login", json={"username": "transport", "password": "wrong"}
        )
    page = await login(browser, service, "admin")
    await page.click("#tabs button[data-view='staff']")
    await page.wait_for_selector("[data-testid='staff-table'] tbody tr")
    locked = "[data-testid='staff-table'] tr[data-username='transport']"
    assert "已锁定" in await page.inner_text(f"{locked} .state")
    await page.click(f"{locked} button:text('解锁')")
    await page.wait_for_selector(f"{locked} .state:text('在用')")
    r = await service.client.post(
        "/api/v1/auth/login", json={"username": "transport", "password": "test-password-1"}
    )
    assert r.status == 200

    await page.fill("#s-username", "night1")
    await page.fill("#s-name", "夜班一号")
    await page.select_option("#s-role", "agent")
    await page.fill("#s-password", "night shift 2026")
    await page.click("#staff-form button[type='submit']")
    await page.wait_for_selector("[data-testid='staff-table'] tr[data-username='night1']")

    water = "[data-testid='staff-table'] tr[data-username='water']"
    await page.click(f"{water} button:text('停用')")
    await page.click("#confirm-yes")
    await page.wait_for_selector(f"{water} .state:text('已停用')")
    r = await service.client.post(
        "/api/v1/auth/login", json={"username": "water", "password": "test-password-1"}
    )
    assert r.status == 401
    await page.screenshot(path=str(tmp_path / "staff.png"), full_page=True)
    assert page.errors == []
