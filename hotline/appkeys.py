"""Typed application state: every long-lived resource has one key here."""

from __future__ import annotations

from aiohttp import web

from citizen_card.journal import PartnerJournal
from citizen_card.service import CardDeps
from hotline.acd.wiring import PhoneLine
from hotline.auth import SessionStore
from hotline.console import Console
from hotline.metrics import Metrics
from hotline.settings import Settings
from ticketing.handlers import Deps
from ticketing.intake import Intake

SETTINGS = web.AppKey("settings", Settings)
DEPS = web.AppKey("deps", Deps)
CARD_DEPS = web.AppKey("card_deps", CardDeps)
INTAKE = web.AppKey("intake", Intake)
SESSIONS = web.AppKey("sessions", SessionStore)
METRICS = web.AppKey("metrics", Metrics)
ROUTE_SPECS = web.AppKey("route_specs", list)
CONSOLE = web.AppKey("console", Console)
PHONE_LINE = web.AppKey("phone_line", PhoneLine)
# the partner API's group-commit writer (nonces, audit rows, first answers)
PARTNER_JOURNAL = web.AppKey("partner_journal", PartnerJournal)
