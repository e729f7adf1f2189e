"""Small vocabularies in one compiled call: sort, filters and the inverse CDF, fused.

For rows of at most `SMALL_VOCAB` tokens a full sort is cheap, and the head
machinery (heads, retries, a hundred small operations) costs more than the
arithmetic. With the compiled path on (qr_core._compiled), `select_sorted`
runs the whole selection of such a batch as one compiled call: a stable sort
of each row, then the filters and the inverse CDF of ``_filters`` specialised
to a fully sorted row (every cut known), in float64. The same definition as
the head path: see ARCHITECTURE.md, design notes "Filter order" and
"Compiled path".
"""

from __future__ import annotations

from typing import Any

from qr_core._array import is_torch_tensor

__all__ = ["SMALL_VOCAB", "fused_small", "run_fused", "select_sorted"]

#: Widest row the fused small path takes.
SMALL_VOCAB = 4096

_NO_CUT = 2**62


def fused_small(logits: Any) -> bool:
    """True when ``logits`` take the fused small path: a 2-D tensor 2 to `SMALL_VOCAB`
    wide, with the compiled path on and working for its device."""
    if not is_torch_tensor(logits) or logits.ndim != 2 or not 2 <= logits.shape[1] <= SMALL_VOCAB:
        return False
    from qr_core._compiled import enabled  # noqa: PLC0415 - it compiles this module's kernel

    return enabled(logits.device.type)


def run_fused(x: Any, params: Any) -> tuple[Any, Any, Any, Any] | None:
    """`select_sorted` compiled on ``x`` with ``params`` (u included); None if it cannot run."""
    from qr_core._compiled import compiled  # noqa: PLC0415 - it compiles select_sorted

    p = params
    x = x if str(x.dtype) in ("torch.float32", "torch.float64") else x.float()
    return compiled("small", x, p.temperature, p.top_k, p.top_p, p.min_p, p.u)


def select_sorted(  # noqa: PLR0917 - a compiled kernel takes its tensors positionally
    x: Any, temperature: Any, top_k: Any, top_p: Any, min_p: Any, u: Any
) -> tuple[Any, Any, Any, Any]:
    """Token, rank, probability and candidate count per row (see `TokenSelector`).

    Args:
        x: ``(rows, vocab)`` checked logits.
        temperature, top_k, top_p, min_p, u: ``(rows,)`` float64 (int64 for top_k).
    """
    import torch  # noqa: PLC0415 - traced by torch.compile, only ever called with tensors

    n = x.shape[1]
    sorted_x, ids = torch.sort(x, dim=-1, descending=True, stable=True)
    values = sorted_x.to(torch.float64)
    pos = torch.arange(n, device=x.device)[None, :]
    valid = values > float("-inf")
    valid_len = valid.sum(-1)
    greedy = temperature <= 0
    temp = torch.where(greedy, 1.0, temperature)
    z = torch.where(valid, torch.exp((values - values[:, :1]) / temp[:, None]), 0.0)
    no_cut = torch.full_like(valid_len, _NO_CUT)
    n_m = (valid & (z >= min_p[:, None])).sum(-1)
    kth = torch.gather(values, 1, (top_k - 1).clamp(0, n - 1)[:, None])
    n_k = torch.where(top_k <= valid_len, (valid & (values >= kth)).sum(-1), valid_len)
    n_mk = torch.minimum(
        torch.minimum(torch.where(top_k > 0, n_k, no_cut), torch.where(min_p > 0, n_m, no_cut)),
        valid_len,
    )
    cum = torch.cumsum(z, -1)
    mass = torch.gather(cum, 1, (n_mk - 1).clamp(0, n - 1)[:, None])
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1] / mass], -1)
    n_p = (valid & (before < top_p[:, None])).sum(-1)
    kept = torch.minimum(n_mk, torch.where(top_p < 1, n_p, no_cut)).clamp(min=1)
    total = torch.gather(cum, 1, (kept - 1)[:, None])
    in_prefix = pos < kept[:, None]
    last_index = (in_prefix & (cum < total)).sum(-1)
    index = (in_prefix & (cum <= u[:, None] * total)).sum(-1)
    index = torch.where(greedy, 0, torch.minimum(index, last_index)).clamp(0, n - 1)
    token = torch.gather(ids, 1, index[:, None])[:, 0]
    prob = torch.where(greedy, 1.0, torch.gather(z, 1, index[:, None])[:, 0] / total[:, 0])
    count = torch.where(greedy, 1, kept)
    return token, index, prob, count
