"""The tensor-parallel exchange of u between the leader (rank 0) and the followers.

Under tensor parallelism every rank of the group samples, and each rank feeds
its own sampled tokens to its next step, so the ranks must choose the same
tokens. Rank 0 (the leader) alone fetches entropy and writes records; at the end
of every step that samples rows it broadcasts the rows' u over the group, NaN
when the step failed. The other ranks (followers) prepare the same selection on
the same logits, receive u, and finish it, or fail the same requests.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["UExchange", "exchange_for"]


class UExchange:
    """One rank's side of the broadcast of each step's u (float64, one per sampled row).

    Args:
        group: vLLM's tensor-parallel group coordinator (``rank_in_group``,
            ``world_size``, ``broadcast(tensor, src)``), with more than one rank.
    """

    def __init__(self, group: Any) -> None:
        self._group = group
        #: True on a rank other than 0: no fetch, no records, u from rank 0.
        self.follower = int(group.rank_in_group) != 0

    def send(self, u: torch.Tensor | None, rows: int, device: torch.device) -> None:
        """The leader's broadcast of the step's u; None (the step failed) sends NaN."""
        if u is None:
            u = torch.full((rows,), math.nan, dtype=torch.float64, device=device)
        self._group.broadcast(u, src=0)

    def receive(self, rows: int, device: torch.device) -> torch.Tensor | None:
        """A follower's receipt of the leader's u; None when the leader failed the step."""
        u = torch.empty(rows, dtype=torch.float64, device=device)
        self._group.broadcast(u, src=0)
        return None if bool(torch.isnan(u).any()) else u


def exchange_for(group: Any | None) -> UExchange | None:
    """The exchange for vLLM's tensor-parallel group; None without one or with one rank."""
    if group is None or int(group.world_size) <= 1:
        return None
    return UExchange(group)
