"""`EntropySource.check`: the start-up check every source has, and what fallback does with it."""

from __future__ import annotations

import pytest
from qr_entropy import (
    EntropySource,
    EntropyUnavailableError,
    FallbackEntropySource,
    SourceCheck,
    SourceCheckError,
    SystemEntropySource,
)


class Unreachable(EntropySource):
    """A source whose check fails the way a remote one reports a missing server."""

    @property
    def name(self) -> str:
        return "unreachable_test"

    def get_random_bytes(self, n: int) -> bytes:
        raise EntropyUnavailableError("no device")

    def check(self, timeout_s: float | None = None) -> SourceCheck:
        return SourceCheck(
            ok=False, source=self.name, detail="no device at /dev/none", problem="unreachable"
        )


def test_the_default_check_is_ok_and_raises_nothing() -> None:
    with SystemEntropySource() as source:
        result = source.check()
        assert result == SourceCheck(ok=True, source="system", detail="nothing to check")
        result.raise_for_failure()


def test_a_failed_check_raises_a_clear_unavailable_error() -> None:
    result = Unreachable().check()
    with pytest.raises(SourceCheckError, match=r"'unreachable_test'.*unreachable.*/dev/none") as e:
        result.raise_for_failure()
    assert e.value.problem == "unreachable"
    assert isinstance(e.value, EntropyUnavailableError)


def test_fallback_reports_the_primarys_check() -> None:
    guarded = FallbackEntropySource(Unreachable(), SystemEntropySource())
    try:
        assert guarded.check().problem == "unreachable"
    finally:
        guarded.close()
