"""Slot bookkeeping: which request sits in which batch slot, and when that changed.

The processor applies vLLM's batch changes here (add, remove, move, swap); the
batch plan is rebuilt only when `SlotTable.version` has moved since it was built.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Sequence
from dataclasses import dataclass

from qr_vllm._records import RequestInfo
from qr_vllm._resolve import ResolvedRequest

__all__ = ["SlotState", "SlotTable"]


@dataclass(slots=True)
class SlotState:
    """One request in its batch slot."""

    request: ResolvedRequest
    info: RequestInfo
    stop_token: int
    prompt_ids: Sequence[int] | None = None
    output_ids: Sequence[int] | None = None
    # (presence, frequency, repetition) when any differs from neutral (runner V1 only).
    penalties: tuple[float, float, float] | None = None
    next_seq: int = 0
    failure: str = ""

    def sequence_number(self) -> int:
        """The index, among the request's output tokens, of the token chosen now.

        Runner V1 hands over the request's live output-token list: its length is that
        index, also when vLLM discards this step's sample (a partly prefilled prompt
        under chunked prefill), whose record then shares its number with the next
        step's, which supersedes it. Runner V2 gives no such list: its positions come
        from vLLM's sequence lengths (`qr_vllm._v2`); this counter serves only where
        they are not known (several rows per request under speculative decoding).
        """
        if self.output_ids is not None:
            return len(self.output_ids)
        seq = self.next_seq
        self.next_seq += 1
        return seq


class SlotTable:
    """The qr-sampled requests by batch slot, with a version that moves on every change."""

    def __init__(self) -> None:
        self._slots: dict[int, SlotState] = {}
        #: Moves on every change of the table or of a request's failure state.
        self.version = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __bool__(self) -> bool:
        return bool(self._slots)

    def __iter__(self) -> Iterator[int]:
        return iter(self._slots)

    def items(self) -> ItemsView[int, SlotState]:
        """(slot, request) pairs."""
        return self._slots.items()

    def get(self, slot: int) -> SlotState | None:
        """The request in ``slot``, or None."""
        return self._slots.get(slot)

    def changed(self) -> None:
        """Something the plan depends on changed outside the table (a request failed)."""
        self.version += 1

    def set_slot(self, slot: int, state: SlotState | None) -> None:
        """Put a request in ``slot`` (None: the slot holds no qr-sampled request)."""
        if state is None:
            self._slots.pop(slot, None)
        else:
            self._slots[slot] = state
        self.version += 1

    def remove(self, slot: int) -> None:
        """The request in ``slot`` left the batch."""
        if self._slots.pop(slot, None) is not None:
            self.version += 1

    def move(self, src: int, dst: int) -> None:
        """The request in ``src`` moved to ``dst`` (replacing whatever was there)."""
        state = self._slots.pop(src, None)
        if state is None:
            self._slots.pop(dst, None)
        else:
            self._slots[dst] = state
        self.version += 1

    def swap(self, a: int, b: int) -> None:
        """The requests in ``a`` and ``b`` traded places."""
        sa = self._slots.pop(a, None)
        sb = self._slots.pop(b, None)
        if sa is not None:
            self._slots[b] = sa
        if sb is not None:
            self._slots[a] = sb
        self.version += 1
