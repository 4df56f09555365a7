"""`GET /api/v1/reports/performance`: the centre's figures as JSON or CSV (for Excel)."""

from __future__ import annotations

from datetime import UTC

from aiohttp import web

from ticketing.handlers import Deps, InvalidRequest
from ticketing.lifecycle import Role
from ticketing.performance import DIMENSIONS, parse_period, performance
from ticketing.webkit import RouteSpec, field_problem, json_response, principal_of

READERS = (Role.SUPERVISOR, Role.ADMIN, Role.DEPARTMENT)


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "").lower()
    if fmt:
        if fmt not in ("json", "csv"):
            raise InvalidRequest("json or csv", "format")
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept


def report_routes(deps: Deps) -> list[RouteSpec]:
    async def performance_report(request: web.Request) -> web.StreamResponse:
        who = principal_of(request, *READERS)
        q = request.query
        try:
            today = deps.clock().astimezone(deps.tz).date()
            period = parse_period(q.get("from"), q.get("to"), today, deps.tz)
            by = q.get("by") or None
            as_csv = _wants_csv(request)
            report = await performance(deps, period, by, who)
        except InvalidRequest as exc:
            raise field_problem(str(exc), exc.field, "(query)") from None
        if not as_csv:
            return json_response(report.view())
        name = f"performance-{period.first}-{period.last}{'-' + by if by else ''}.csv"
        return web.Response(
            text=report.csv(),
            content_type="text/csv",
            charset="utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Last-Modified": report.generated_at.astimezone(UTC).strftime(
                    "%a, %d %b %Y %H:%M:%S GMT"
                ),
            },
        )

    return [
        RouteSpec(
            "GET",
            "/api/v1/reports/performance",
            performance_report,
            "The centre's figures for the tickets received in a period (按时办结率, 满意率 ...)",
            roles=READERS,
            tag="reports",
            query=(
                ("from", "first local day, YYYY-MM-DD (default: the 1st of this month)"),
                ("to", "last local day, included (default: today); at most 366 days"),
                ("by", f"group by {', '.join(DIMENSIONS)}; omitted: the total only"),
                ("format", "json (default) or csv; Accept: text/csv works too"),
            ),
            responses={
                200: "the report (JSON or CSV)",
                403: "agents have no report; a department sees its own tickets",
                422: "bad from/to/by/format",
            },
        )
    ]
