"""ItemResult.to_json writes the usual item itself (no json.dumps): the same text as json.dumps,
and read back as it was."""

import json
import math

import pytest

from core.jobs import ItemResult


@pytest.mark.parametrize(
    "result",
    [
        ItemResult(0, 7, 0.9931234567890123, False),
        ItemResult(1, 0, 1.0, False),
        ItemResult(2, 9, 1e-17, True),
        ItemResult(3, 3, 0.5, True),
        ItemResult(4, None, None, False, 'not a readable image: "x"\n'),
        ItemResult(5, 1, math.nan, True),  # never a confidence: json.dumps writes NaN
    ],
)
def test_result_json_is_json_dumps(result: ItemResult) -> None:
    expected = json.dumps(
        [result.digit, result.confidence, result.low_confidence, result.error], separators=(",", ":")
    )
    assert result.to_json() == expected
    back = ItemResult.from_json(result.index, result.to_json())
    assert back == result or (math.isnan(back.confidence or 0.0) and math.isnan(result.confidence or 0.0))
