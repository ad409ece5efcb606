"""The OpenAPI document, finished in one place for every route (new routes included):

- readable operationIds: `createJob`, `getJob`, ... (OPERATION_IDS), else the route function's
  name in camelCase (`label_item` -> `labelItem`), never FastAPI's `submit_job_jobs_post`;
- every error as `application/problem+json` with the Problem schema (FastAPI's
  `HTTPValidationError` is gone: a 422 is a problem too);
- the statuses every route of a kind can answer, besides its own: 401/403 with a key, 408/413/503
  with a body (api/limits.py), 422 with parameters, 503 with Redis behind it;
- the response headers (`Location`, `Retry-After`, `Idempotent-Replayed`, `Preference-Applied`,
  `WWW-Authenticate`);
- uploads as `format: binary` besides OpenAPI 3.1's `contentMediaType`, which client generators
  (openapi-python-client among them) do not read yet: without it they send a file as a text field.

Security schemes come from FastAPI itself (api/deps.py declares the keys with its security
classes); the problem types and their pages from api/problems.py.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.schemas import Problem

OPERATION_IDS = {  # route function -> operationId, where camelCase of the name is not the best
    "submit_job": "createJob",
    "health": "getHealth",
    "ready": "getReadiness",
    "prometheus_metrics": "getMetrics",
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_JSON = "application/problem+json"


def operation_id(route: APIRoute) -> str:
    """FastAPI's `generate_unique_id_function`: also names the request-body schemas."""
    return OPERATION_IDS.get(route.name) or camel(route.name)


def camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word[:1].upper() + word[1:] for word in rest)


def _header(description: str, type_: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


RETRY_AFTER = _header("Seconds to wait before repeating the request", "integer")
LOCATION = _header("The job's URL: `/jobs/{id}`")
REPLAYED = _header("`true` when an Idempotency-Key named an earlier submission, whose job this is")
APPLIED = _header("`wait=N` when the request honoured `Prefer: wait=N`")
HEADERS_BY_STATUS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": _header("`Bearer`: how to send a key")},
    "409": {"Retry-After": RETRY_AFTER},
    "429": {"Retry-After": RETRY_AFTER},
    "503": {"Retry-After": RETRY_AFTER},
}
HEADERS_BY_OPERATION: dict[tuple[str, str], dict[str, Any]] = {
    ("createJob", "202"): {
        "Location": LOCATION,
        "Idempotent-Replayed": REPLAYED,
        "Preference-Applied": APPLIED,
    },
    ("createJob", "200"): {
        "Location": LOCATION,
        "Idempotent-Replayed": REPLAYED,
        "Preference-Applied": APPLIED,
    },
    ("getJob", "200"): {"Preference-Applied": APPLIED},
    ("predict", "504"): {"Location": LOCATION},
    ("predictBatch", "504"): {"Location": LOCATION},
}
COMMON = {  # statuses a route may answer because of what it is, and why
    "401": "Missing or wrong API key (only when the server has keys)",
    "403": "Without API_KEYS: a client beyond loopback, or a cross-site browser request",
    "408": "The request body did not arrive within BODY_READ_TIMEOUT_SECONDS",
    "413": "The request body is over MAX_UPLOAD_BYTES",
    "422": "A malformed parameter, header or field",
    "503": "The job store is unreachable, or (with a body) too many uploads at once: see Retry-After",
}
WITHOUT_REDIS = {"getHealth"}  # answers without touching Redis: never a 503


def _common_statuses(op: dict[str, Any]) -> list[str]:
    statuses = []
    if op.get("security"):
        statuses += ["401", "403"]
    if "requestBody" in op:
        statuses += ["408", "413", "422"]
    if op.get("parameters"):
        statuses.append("422")
    if op["operationId"] not in WITHOUT_REDIS:
        statuses.append("503")
    return statuses


def _is_problem(response: dict[str, Any]) -> bool:
    """An error response documented as JSON of another shape (/ready's 503) stays as it is."""
    content = response.get("content") or {}
    if "application/json" not in content:
        return True
    ref = content["application/json"].get("schema", {}).get("$ref", "")
    return ref.rsplit("/", 1)[-1] in {"Problem", "HTTPValidationError"}


def _as_problem(response: dict[str, Any]) -> None:
    content = response.get("content") or {}
    example = {k: v for k, v in (content.get(PROBLEM_JSON) or {}).items() if k in ("example", "examples")}
    response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF, **example}}


def _mark_binary(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == "application/octet-stream":
            node.setdefault("format", "binary")
        for value in node.values():
            _mark_binary(value)
    elif isinstance(node, list):
        for value in node:
            _mark_binary(value)


def finish(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document with the problems, statuses, headers and uploads above."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _mark_binary(schemas)
    schemas["Problem"] = Problem.model_json_schema()
    for operations in schema.get("paths", {}).values():
        for op in operations.values():
            responses = op["responses"]
            for status in _common_statuses(op):
                responses.setdefault(status, {"description": COMMON[status]})
            for status, response in responses.items():
                if status[0] in "45" and _is_problem(response):
                    _as_problem(response)
                headers = {
                    **HEADERS_BY_STATUS.get(status, {}),
                    **HEADERS_BY_OPERATION.get((op["operationId"], status), {}),
                }
                if headers:
                    response["headers"] = {**headers, **response.get("headers", {})}
    return schema


def install(app: FastAPI) -> None:
    """`app.openapi()` builds FastAPI's document once, finished."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it
