"""`SourceCheck`: the outcome of a source's start-up check, and the error it raises."""

from __future__ import annotations

from dataclasses import dataclass

from qr_entropy._errors import SourceCheckError

__all__ = ["SourceCheck"]


@dataclass(frozen=True, slots=True)
class SourceCheck:
    """What `EntropySource.check` found.

    Attributes:
        ok: True when the source can serve (or has nothing it can check).
        source: Name of the source checked.
        detail: One line for a log: what was checked, or what failed, where, and what
            to change.
        problem: Empty when ``ok``; otherwise a short word for the kind of failure a
            caller may branch on: ``unreachable`` (no server, refused connection, TLS
            failure), ``unauthenticated`` (wrong or missing credentials), ``timeout``
            (no answer in time), ``misconfigured`` (the server does not serve what the
            settings name, or refuses the request's shape), ``bad_response`` or
            ``closed``.
    """

    ok: bool
    source: str
    detail: str
    problem: str = ""

    def raise_for_failure(self) -> None:
        """Raise `SourceCheckError` with the detail unless the check passed.

        Raises:
            SourceCheckError: ``ok`` is False.
        """
        if not self.ok:
            raise SourceCheckError(
                f"entropy source {self.source!r} failed its start-up check "
                f"({self.problem}): {self.detail}",
                problem=self.problem,
            )
