"""The tensor-parallel exchange of u, over an in-process stand-in for vLLM's group.

The real exchange between engine ranks (vLLM's `GroupCoordinator.broadcast` over
two worker processes) is tested in tests-integration/test_tensor_parallel.py; here
a stand-in with the same three members checks what each side sends and makes of it.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from qr_vllm._tp import UExchange, exchange_for  # noqa: E402

pytestmark = pytest.mark.torch


class Group:
    """What the exchange uses of vLLM's GroupCoordinator; broadcast copies the leader's tensor."""

    def __init__(self, rank: int, world_size: int, wire: list[object]) -> None:
        self.rank_in_group = rank
        self.world_size = world_size
        self.wire = wire

    def broadcast(self, tensor: object, src: int = 0) -> object:
        assert src == 0
        if self.rank_in_group == 0:
            self.wire.append(tensor.clone())  # type: ignore[attr-defined]
        else:
            tensor.copy_(self.wire.pop(0))  # type: ignore[attr-defined]
        return tensor


def test_no_exchange_without_several_ranks() -> None:
    assert exchange_for(None) is None
    assert exchange_for(Group(0, 1, [])) is None
    assert isinstance(exchange_for(Group(1, 2, [])), UExchange)


def test_the_followers_get_the_leaders_u_or_learn_that_it_failed() -> None:
    wire: list[object] = []
    leader, follower = UExchange(Group(0, 2, wire)), UExchange(Group(1, 2, wire))
    assert (leader.follower, follower.follower) == (False, True)
    cpu = torch.device("cpu")
    u = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    leader.send(u, 3, cpu)
    got = follower.receive(3, cpu)
    assert got is not None
    assert torch.equal(got, u)
    leader.send(None, 2, cpu)  # the leader failed the step
    assert all(math.isnan(x) for x in wire[0].tolist())  # type: ignore[attr-defined]
    assert follower.receive(2, cpu) is None
