"""How a fetch splits into requests: whole rows per request, each with its own row count."""

from __future__ import annotations

import pytest
from qr_grpc._fetcher import plan_requests


@pytest.mark.parametrize(
    ("n", "rows", "chunk", "plan"),
    [
        (1000, 0, 4096, [(1000, 0)]),  # one row, sent as older clients send it
        (1000, 1, 4096, [(1000, 1)]),
        (64 * 100, 64, 10_000, [(6400, 64)]),  # everything fits in one request
    ],
)
def test_unsplit_fetches_are_one_request(
    n: int, rows: int, chunk: int, plan: list[tuple[int, int]]
) -> None:
    assert plan_requests(n, rows, chunk) == plan


def test_whole_rows_per_request_with_a_short_last_request() -> None:
    assert plan_requests(10 * 1000, 10, 3000) == [(3000, 3), (3000, 3), (3000, 3), (1000, 1)]


def test_a_limit_that_is_not_a_multiple_of_the_row_keeps_whole_rows() -> None:
    assert plan_requests(6 * 1000, 6, 2500) == [(2000, 2)] * 3


def test_a_row_above_the_limit_is_split_inside_with_rows_zero() -> None:
    plan = plan_requests(2 * 5000, 2, 2000)
    assert plan == [(2000, 0), (2000, 0), (1000, 0)] * 2
    assert sum(size for size, _ in plan) == 10_000


def test_a_plain_fetch_above_the_limit_is_split_by_bytes() -> None:
    assert plan_requests(5000, 0, 2000) == [(2000, 0), (2000, 0), (1000, 0)]
