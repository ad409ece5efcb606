"""API fuzzing (issue 13): schemathesis generates requests from the OpenAPI schema the running
API serves and sends them over HTTP to the real stack; no answer may be a 5xx, and every answer
must match the schema (status code, content type, body). Bounded: a fixed number of
deterministic examples per operation keeps the whole run well under a minute."""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack.stack import Stack

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

EXAMPLES_PER_OPERATION = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def operations(stack: Stack) -> list:
    # The schema the running API serves, not the app object: what clients really get. (Loaded in
    # the test, not with schemathesis' pytest plugin, which needs pytest < 9.)
    served = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    return [result.ok() for result in served.get_all_operations()]


def test_the_served_schema_holds_and_nothing_is_a_5xx(operations: list, stack: Stack) -> None:
    assert {op.path for op in operations} >= {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results", "/ready"}
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,  # the same examples every run
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def fuzz(case) -> None:
            case.call_and_validate(base_url=stack.api_url, checks=CHECKS, timeout=30)

        try:
            fuzz()
        except Exception as exc:  # one operation's failure must not hide the others'
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
