"""The OpenAPI 3.1 document of the HTTP API (https://spec.openapis.org/oas/v3.1.0), served at
/v1/openapi.json. The tests check every route and answer against it."""

from __future__ import annotations

from typing import Any

from anycode_actors import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {
        400: "Bad request: not JSON, a missing or wrong field, an unknown agent",
        401: "No token, or a token nobody has",
        403: "Not allowed for this user",
        404: "No such session (or not yours to see)",
        405: "Method not allowed",
        409: "The session has ended, or the permission was already answered",
        413: "The body is over api.max_body_kb",
        429: "A [limits] quota, or requests too fast",
        503: "The daemon did not answer in time",
    }
    return {str(s): _answer(words[s], _ERROR) for s in (401, *statuses)}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_SESSION = {"$ref": "#/components/schemas/Session"}
_DETAIL = {"$ref": "#/components/schemas/SessionDetail"}
_ACCEPTED = {"$ref": "#/components/schemas/Accepted"}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "anycode HTTP API",
            "version": __version__,
            "description": "Start and watch coding-agent sessions. Bearer token per person "
            "([api.users.<name>]); GET requests may carry it in the anycode_token cookie.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/sessions": {
                "post": {
                    "summary": "Start a task",
                    "operationId": "startSession",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["prompt"],
                            "additionalProperties": False,
                            "properties": {
                                "prompt": {"type": "string", "minLength": 1},
                                "agent": {"type": "string"},
                                "repo": {"type": "string"},
                            },
                        }
                    ),
                    "responses": {
                        "201": _answer("The session, recorded and starting", _DETAIL),
                        **_errors(400, 413, 429, 503),
                    },
                },
                "get": {
                    "summary": "Your sessions, newest first (an admin's: everyone's)",
                    "operationId": "listSessions",
                    "responses": {
                        "200": _answer(
                            "The sessions",
                            {
                                "type": "object",
                                "required": ["sessions"],
                                "properties": {"sessions": {"type": "array", "items": _SESSION}},
                            },
                        ),
                        **_errors(),
                    },
                },
            },
            "/v1/sessions/{id}": {
                "parameters": [_ID],
                "get": {
                    "summary": "One session, with its pending permissions and files",
                    "operationId": "getSession",
                    "responses": {"200": _answer("The session", _DETAIL), **_errors(404)},
                },
                "delete": {
                    "summary": "Cancel the session",
                    "operationId": "cancelSession",
                    "responses": {
                        "202": _answer("Cancelling", _ACCEPTED),
                        **_errors(404, 409, 429),
                    },
                },
            },
            "/v1/sessions/{id}/events": {
                "parameters": [
                    _ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                        "description": "Resume after this event (the `id:` of the last one seen)",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "Same as Last-Event-ID, for clients that cannot set it",
                    },
                ],
                "get": {
                    "summary": "The session's events as server-sent events: the stored log "
                    "after Last-Event-ID, then live; `state` and `end` events (without id) "
                    "report the status, pending permissions and files",
                    "operationId": "sessionEvents",
                    "responses": {
                        "200": {
                            "description": "An event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 404),
                    },
                },
            },
            "/v1/sessions/{id}/messages": {
                "parameters": [_ID],
                "post": {
                    "summary": "Send the agent a follow-up (the session's owner only)",
                    "operationId": "followUp",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["text"],
                            "properties": {"text": {"type": "string", "minLength": 1}},
                        }
                    ),
                    "responses": {
                        "202": _answer("Delivered to the session", _ACCEPTED),
                        **_errors(400, 403, 404, 409, 413, 429),
                    },
                },
            },
            "/v1/sessions/{id}/permissions/{interaction}": {
                "parameters": [
                    _ID,
                    {
                        "name": "interaction",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "post": {
                    "summary": "Answer a permission request",
                    "operationId": "answerPermission",
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "option": {"type": "integer", "minimum": 0},
                                "option_id": {"type": "string"},
                            },
                        }
                    ),
                    "responses": {
                        "202": _answer("The answer goes to the agent", _ACCEPTED),
                        **_errors(400, 404, 409, 413),
                    },
                },
            },
            "/v1/sessions/{id}/files/{name}": {
                "parameters": [
                    _ID,
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "get": {
                    "summary": "A file the agent left in its outbox",
                    "operationId": "getFile",
                    "responses": {
                        "200": {
                            "description": "The file's bytes",
                            "content": {"application/octet-stream": {}},
                        },
                        **_errors(404),
                    },
                },
            },
            "/v1/tree": {
                "get": {
                    "summary": "The live actor tree, as `anycode tree --json` prints it",
                    "operationId": "tree",
                    "responses": {
                        "200": _answer(
                            "The snapshot",
                            {
                                "type": "object",
                                "required": ["ok", "daemon", "now", "entries"],
                                "properties": {
                                    "ok": {"const": True},
                                    "daemon": {"type": "object"},
                                    "now": {"type": "string"},
                                    "entries": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        ),
                        **_errors(),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Accepted": {
                    "type": "object",
                    "required": ["accepted"],
                    "properties": {"accepted": {"const": True}, "option_id": {"type": "string"}},
                },
                "Session": {
                    "type": "object",
                    "required": [
                        "id",
                        "status",
                        "owner",
                        "agent",
                        "prompt",
                        "created_at",
                        "last_event_id",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "status": {
                            "enum": [
                                "pending",
                                "starting",
                                "running",
                                "completed",
                                "failed",
                                "cancelled",
                            ]
                        },
                        "owner": {"type": "string"},
                        "agent": {"type": "string"},
                        "prompt": {"type": "string"},
                        "repo": {"type": ["string", "null"]},
                        "reason": {"type": ["string", "null"]},
                        "created_at": {"type": "string"},
                        "updated_at": {"type": "string"},
                        "ended_at": {"type": ["string", "null"]},
                        "last_event_id": {"type": "integer"},
                    },
                },
                "SessionDetail": {
                    "allOf": [
                        _SESSION,
                        {
                            "type": "object",
                            "required": ["pending", "files"],
                            "properties": {
                                "pending": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Permission"},
                                },
                                "files": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["name", "size"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "size": {"type": "integer"},
                                            "caption": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    ]
                },
                "Permission": {
                    "type": "object",
                    "required": ["id", "title", "options"],
                    "properties": {
                        "id": {"type": "string"},
                        "title": {"type": "string"},
                        "input": {"type": "string"},
                        "options": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["index", "option_id", "name", "kind"],
                                "properties": {
                                    "index": {"type": "integer"},
                                    "option_id": {"type": "string"},
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }
