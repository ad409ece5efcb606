"""Optional form fields of `POST /jobs` besides the files: `metadata` (and the webhook fields).

Each parser answers a 4xx problem that says what to fix, never a 500.
"""

import json

from api.problems import ProblemError

MAX_METADATA_KEYS = 16
MAX_METADATA_CHARS = 512


def _bad_metadata(detail: str) -> ProblemError:
    return ProblemError(422, "Invalid metadata", f"metadata: {detail}")


def parse_metadata(raw: str | None) -> dict[str, str]:
    """A JSON object of at most 16 string keys and string values of at most 512 characters each."""
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise _bad_metadata(f'not valid JSON ({exc}); send an object like {{"batch": "42"}}') from None
    if not isinstance(value, dict):
        raise _bad_metadata(f"a JSON object is needed, not {type(value).__name__}")
    if len(value) > MAX_METADATA_KEYS:
        raise _bad_metadata(f"{len(value)} keys; at most {MAX_METADATA_KEYS}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _bad_metadata(f"the value of {key[:40]!r} is {type(item).__name__}; values must be strings")
        for what, text in (("key", key), ("value", item)):
            if len(text) > MAX_METADATA_CHARS:
                raise _bad_metadata(
                    f"{what} of {len(text)} characters ({key[:40]!r}); at most {MAX_METADATA_CHARS}"
                )
    return value
