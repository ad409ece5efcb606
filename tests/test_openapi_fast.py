"""The OpenAPI document a generated client relies on (api/openapi.py), and the problem types'
pages (api/problems.py). The stack tier checks real answers against it (tests/test_schemathesis.py)
and generates a client from it (tests/test_openapi_client.py)."""

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.problems import CATALOGUE, slug

ROOT = Path(__file__).resolve().parent.parent
CAMEL = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*$")
PROBLEM = {"$ref": "#/components/schemas/Problem"}


@pytest.fixture
def schema(app_client: TestClient) -> dict[str, Any]:
    return app_client.get("/openapi.json").json()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_operation_ids_are_readable_camel_case_and_unique(schema: dict[str, Any]) -> None:
    ids = {f"{method.upper()} {path}": op["operationId"] for method, path, op in operations(schema)}
    assert {
        "POST /jobs": "createJob", "GET /jobs": "listJobs", "GET /jobs/{job_id}": "getJob",
        "DELETE /jobs/{job_id}": "cancelJob", "GET /jobs/{job_id}/results": "getResults",
        "POST /predict": "predict", "POST /predict_batch": "predictBatch",
    }.items() <= ids.items()  # fmt: skip
    for where, op_id in ids.items():
        # FastAPI's default is `<function>_<path>_<method>`: underscores, the method at the end.
        assert CAMEL.match(op_id), f"{where}: {op_id!r} is not camelCase"
    assert len(set(ids.values())) == len(ids)


def test_keys_are_security_schemes_applied_per_route(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {**schemes["bearerKey"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "ADMIN_API_KEYS" in schemes["adminBearerKey"]["description"]
    by_path = {(method, path): op.get("security") for method, path, op in operations(schema)}
    assert by_path[("post", "/jobs")] == [{"bearerKey": []}, {"apiKey": []}]
    assert by_path[("post", "/admin/reload")] == [{"adminBearerKey": []}, {"adminApiKey": []}]
    assert by_path[("get", "/health")] is None
    for method, path, op in operations(schema):  # the keys are schemes, not stray header parameters
        names = {p["name"].lower() for p in op.get("parameters", [])}
        assert not names & {"authorization", "x-api-key"}, f"{method} {path}"


def test_every_error_is_a_problem_and_validation_errors_too(schema: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    problem = schema["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= problem["properties"].keys()
    for method, path, op in operations(schema):
        for status, response in op["responses"].items():
            if status[0] in "45" and not (path == "/ready" and status == "503"):  # /ready: its own JSON
                assert response["content"] == {
                    "application/problem+json": {
                        "schema": PROBLEM,
                        **response["content"]["application/problem+json"],
                    }
                }, f"{method} {path} {status}"
                assert "application/json" not in response["content"]


def test_the_statuses_a_route_can_answer_are_documented(schema: dict[str, Any]) -> None:
    submit = schema["paths"]["/jobs"]["post"]["responses"]
    assert {
        "200",
        "202",
        "400",
        "401",
        "403",
        "408",
        "409",
        "413",
        "415",
        "422",
        "429",
        "503",
    } <= submit.keys()
    assert {"408", "413", "503", "504"} <= schema["paths"]["/predict"]["post"]["responses"].keys()
    assert "503" not in schema["paths"]["/health"]["get"]["responses"]


def test_response_headers_are_declared(schema: dict[str, Any]) -> None:
    submit = schema["paths"]["/jobs"]["post"]["responses"]
    assert {"Location", "Idempotent-Replayed", "Preference-Applied"} <= submit["202"]["headers"].keys()
    assert "Retry-After" in submit["429"]["headers"] and "Retry-After" in submit["503"]["headers"]
    assert "Location" in schema["paths"]["/predict"]["post"]["responses"]["504"]["headers"]
    assert "Preference-Applied" in schema["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["headers"]


def problem_titles() -> set[str]:
    """Every literal title given to ProblemError(...) or problem(...) anywhere in api/."""
    titles = set()
    for path in (ROOT / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            title = node.args[1] if len(node.args) >= 2 else None
            if node.func.id in {"ProblemError", "problem"} and isinstance(title, ast.Constant):
                titles.add(title.value)
    return titles


def test_every_problem_raised_has_a_type_and_a_page() -> None:
    titles = problem_titles()
    assert len(titles) > 20, "the scan finds the problems"
    assert not titles - CATALOGUE.keys(), "add these to api/problems.py CATALOGUE"


def test_a_problem_names_its_type_and_the_type_has_a_page(app_client: TestClient) -> None:
    refused = app_client.get("/jobs/" + "0" * 32)
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["type"] == "/problems/not-found" and body["title"] == "Not found"
    page = app_client.get(body["type"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in page.text and "expire" in page.text
    unknown = app_client.get("/problems/no-such-problem")
    assert unknown.status_code == 404 and unknown.json()["type"] == "/problems/not-found"


def test_an_invalid_request_is_a_problem_with_its_own_type(app_client: TestClient) -> None:
    invalid = app_client.get("/jobs", params={"limit": "many"})
    assert invalid.status_code == 422 and invalid.json()["type"] == f"/problems/{slug('Invalid request')}"


def test_a_problem_without_an_entry_is_about_blank_with_the_status_phrase() -> None:
    from api.problems import problem

    body = problem(418, "Something new", "made up").body
    assert b'"type":"about:blank"' in body and b"I'm a Teapot" in body and b"Something new" not in body
