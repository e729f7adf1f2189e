"""Runner V2's rows and identities, from vLLM's own request state.

Runner V2 gives the processor no output-token list per request, samples (then
discards) a token for a prompt that is only partly prefilled, and re-adds a
request resumed after preemption as a new one. `V2Requests` reads vLLM's host
copies of the prompt and prefill lengths and the step's sequence lengths to say,
per row, which token is being chosen and whether vLLM will keep it, and keeps a
resumed request's identity (see ARCHITECTURE.md, design note "Runner V2 records").
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from qr_vllm._records import RequestInfo

__all__ = ["V2Requests"]

#: Identities kept for the resumption of preempted requests (oldest dropped first).
MAX_IDENTITIES = 4096


class V2Requests:
    """Positions and identities of runner V2's requests.

    Args:
        req_states: vLLM's ``LogitsProcRequestState`` (its ``prompt_len`` and
            ``prefill_len`` host arrays are read); without them (tests that build
            none), rows are every row and positions are each request's own count.
    """

    def __init__(self, req_states: Any) -> None:
        prompt = getattr(req_states, "prompt_len", None)
        prefill = getattr(req_states, "prefill_len", None)
        self._prompt: np.ndarray | None = None if prompt is None else prompt.np
        self._prefill: np.ndarray | None = None if prefill is None else prefill.np
        self._identities: OrderedDict[tuple[str, int], RequestInfo] = OrderedDict()

    def identity(self, slot: int, params: Any) -> tuple[tuple[str, int] | None, RequestInfo | None]:
        """The key of the request entering ``slot``, and its identity if it is resumed.

        vLLM has already written the request's lengths when it adds it: a prefill
        longer than the prompt holds output made before a preemption. The key is
        what stays the same across it: the sampling parameters and the prompt length.
        """
        if self._prompt is None or self._prefill is None:
            return None, None
        prompt = int(self._prompt[slot])
        done = int(self._prefill[slot]) - prompt
        key = (repr(params), prompt)
        return key, (self._identities.get(key) if done > 0 else None)

    def remember(self, key: tuple[str, int] | None, info: RequestInfo) -> None:
        """Keep ``info`` as the identity of requests with ``key``."""
        if key is None:
            return
        self._identities[key] = info
        self._identities.move_to_end(key)
        while len(self._identities) > MAX_IDENTITIES:
            self._identities.popitem(last=False)

    def rows(self, slots: np.ndarray, seq_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows' slots (-1: a partial prefill's sample, which vLLM discards) and positions.

        A row's position (its token's index among the request's outputs) is its
        sequence length less its prompt length.
        """
        if self._prompt is None or self._prefill is None:
            return slots, None
        seq = np.asarray(seq_lens[: slots.size], dtype=np.int64)
        positions = seq - self._prompt[slots]
        discarded = seq < self._prefill[slots]
        if discarded.any():
            slots = np.where(discarded, -1, slots)
        return slots, positions
