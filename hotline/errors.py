"""Turn every failure into RFC 9457 problem+json, and never leak a stack trace."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import aiohttp.web_server
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from hotline.appkeys import SETTINGS
from ticketing.store import StoreUnavailable, answers_unavailable, first_line, is_unavailable
from ticketing.webkit import PROBLEM_JSON, problem, problem_body, problem_response

log = logging.getLogger(__name__)

_BY_STATUS = {
    400: "malformed-body",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}
# NUL has no place in any path segment or query value of the JSON API, and
# PostgreSQL's text cannot hold it: every lookup with one would fail in the driver
_NUL_CHECKED = "/api/"


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        if request.path.startswith(_NUL_CHECKED) and (
            "\x00" in request.path or "\x00" in request.query_string
        ):
            raise problem("invalid-request", "the URL must not contain NUL characters (%00)")
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == PROBLEM_JSON or exc.status < 400:
            raise
        slug = _BY_STATUS.get(exc.status)
        if slug is None:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        if exc.status == 413:
            detail = f"the body is larger than {request.app[SETTINGS].max_body_bytes} bytes"
        resp = problem_response(slug, detail)
        if exc.status == 405:
            allow = exc.headers.get("Allow")
            if allow:
                resp.headers["Allow"] = allow
        return resp
    except StoreUnavailable as exc:
        return _unavailable(request, exc)
    except IntegrityError:
        # a race another instance won (same Idempotency-Key, same code): retrying
        # gets the winner's answer
        log.info("integrity conflict on %s %s", request.method, request.path)
        return problem_response("conflict")
    except (OperationalError, DBAPIError) as exc:
        if "locked" in str(exc).lower() or "could not serialize" in str(exc).lower():
            resp = problem_response("service-unavailable", "the database is busy; retry")
            resp.headers["Retry-After"] = "1"
            return resp
        if is_unavailable(exc):
            return _unavailable(request, exc)
        log.exception("database error on %s %s", request.method, request.path)
        return problem_response("internal-error")
    except Exception as exc:
        if answers_unavailable(exc):  # a raw driver's error
            return _unavailable(request, exc)
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response("internal-error")


def _unavailable(request: web.Request, exc: BaseException) -> web.Response:
    """The database cannot serve now (too many connections, shutting down, unreachable):
    a 503 the client retries, and one line in the log -- not a traceback per request
    while PostgreSQL is out of connection slots."""
    log.warning(
        "database unavailable for %s %s: %s",
        request.method,
        request.path,
        first_line(exc),
    )
    resp = problem_response("service-unavailable")
    resp.headers["Retry-After"] = "5"
    return resp


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering requests it cannot parse with problem+json.

    A request line or header aiohttp's parser refuses (not HTTP, a header past 8 KiB, a
    bad chunk size) never reaches the application or its middlewares: aiohttp answers
    it itself, in text/plain. Clients of this API read problem+json for every error, so
    the parser's refusals are spelt the same way.

    aiohttp logs each refusal at ERROR with a traceback: on a public port anyone can
    fill the log with them (scanners, TLS on the HTTP port), burying real faults. A
    client's malformed request is logged once, on one line, at INFO; only a 5xx (our
    own fault) keeps the ERROR and its traceback.
    """

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            self.logger.info(
                "refused a malformed request from %s: %s %s",
                request.remote,
                status,
                _first_line(message or (str(exc) if exc else ""))[:200],
            )
        if request.writer.output_size > 0:  # part of a reply went out: nothing to add
            raise ConnectionError("the response was sent already; cannot send the error")
        if status == 400:
            _, body = problem_body("malformed-request", _first_line(message or "")[:200] or None)
        elif status == 500:
            _, body = problem_body("internal-error")
        else:
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
            body = {"type": "about:blank", "title": phrase or "Error", "status": status}
        resp = web.Response(
            status=status, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON
        )
        resp.force_close()
        return resp


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def install_problem_parser_errors() -> None:
    """Make every aiohttp server in this process use `ProblemRequestHandler`.

    `web.Server` builds one handler per connection from the module's `RequestHandler`
    name and offers no parameter for the class; rebinding that name is the one hook.
    Idempotent; servers that are already running pick it up for new connections.
    """
    aiohttp.web_server.RequestHandler = ProblemRequestHandler  # type: ignore[misc]
