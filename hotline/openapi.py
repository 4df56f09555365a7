"""The OpenAPI 3.1 document, built from the same RouteSpecs the router uses."""

from __future__ import annotations

import re
from typing import Any

from pydantic.json_schema import models_json_schema

from ticketing.webkit import PROBLEM_TITLES, RouteSpec

PARAM_RE = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def build_openapi(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    models = {s.body for s in specs if s.body is not None}
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Problem"] = {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string", "enum": [f"/problems/{k}" for k in PROBLEM_TITLES]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "required": ["type", "title", "status"],
    }
    paths: dict[str, dict[str, Any]] = {}
    for s in specs:
        path = PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", s.path)
        op: dict[str, Any] = {
            "operationId": f"{s.method.lower()}_{s.handler.__name__}",
            "summary": s.summary,
            "tags": [s.tag],
            "responses": {
                str(code): _response(code, text) for code, text in sorted(s.responses.items())
            },
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in PARAM_RE.findall(s.path)
        ]
        params += [
            {
                "name": n,
                "in": "query",
                "required": False,
                "description": d,
                "schema": {"type": "string"},
            }
            for n, d in s.query
        ]
        if params:
            op["parameters"] = params
        if s.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": f"#/components/schemas/{s.body.__name__}"}
                    }
                },
            }
        if s.raw_body:
            op["requestBody"] = {
                "required": True,
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            }
        if s.roles is not None:
            op["security"] = [{"bearer": []}, {"cookie": []}]
            if s.roles:
                op["description"] = "Roles: " + ", ".join(r.value for r in s.roles)
            op["responses"].setdefault("401", _response(401, "not signed in"))
            if s.roles:
                op["responses"].setdefault("403", _response(403, "role not allowed"))
        if s.body is not None:
            op["responses"].setdefault("422", _response(422, "invalid body"))
        paths.setdefault(path, {})[s.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "12345 hotline and citizen card engine",
            "version": version,
            "description": "Errors are RFC 9457 application/problem+json with a stable type.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "hotline_session"},
            },
        },
    }


def _response(code: int, text: str) -> dict[str, Any]:
    if code >= 400:
        return {
            "description": text,
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    if code == 204:
        return {"description": text}
    return {"description": text, "content": {"application/json": {"schema": {"type": "object"}}}}
