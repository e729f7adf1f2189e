"""CDF token selection: top-k, softmax at temperature T, top-p, min-p, then the inverse CDF at u.

Every filter keeps a prefix of the same *canonical order* of a row: logits
descending, equal logits by ascending token id. Top-k keeps the first k,
top-p the shortest prefix whose mass reaches p, min-p the tokens whose
probability is at least ``min_p`` times the largest (a prefix too, since
probability falls along the order). The kept prefix is renormalised and the
token is the first one whose cumulative mass exceeds ``u``.

The batch path never orders the whole vocabulary when it does not have to.
It takes a *head*: the largest few hundred logits of each row, found with a
partial selection. Every logit strictly greater than the smallest one fetched
is in the head, so the canonical order of that part is exact. When every
filter cuts inside it, or no filter cuts and ``u`` falls inside its mass, the
head decides the row. The other rows go round again with a head sixteen
times larger, and finally with a full sort. The same function turns a head
or a fully sorted row into a token, so the two paths share one definition.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qr_core._array import (
    Backend,
    backend_for,
    chunk_groups,
    host_view,
    is_torch_tensor,
    small_host_view,
)
from qr_core._checks import check_logits, check_row_max
from qr_core._errors import TokenSelectionError
from qr_core._sync import is_sync_free

if TYPE_CHECKING:
    from qr_core._array import Array

__all__ = [
    "DEFAULT_HEAD_SIZE",
    "BatchSelectionResult",
    "PreparedSelection",
    "SelectionResult",
    "TokenSelector",
]

logger = logging.getLogger(__name__)

#: Width of the first head: enough to hold u for almost every row of real model output.
DEFAULT_HEAD_SIZE = 256
# Each retry looks at a head this many times wider than the last.
_HEAD_GROWTH = 16
# A head wider than 1/_FULL_SORT_FRACTION of the row costs about as much as sorting the row.
_FULL_SORT_FRACTION = 4
# Larger than any prefix length: marks "this filter does not cut here".
_NO_CUT = 2**62


@dataclass(frozen=True, slots=True)
class SelectionResult:
    """The token chosen for one row.

    Attributes:
        token_id: Vocabulary index of the chosen token.
        token_rank: Its position in the canonical order (0 = most probable).
        token_prob: Its probability after every filter and renormalisation
            (1.0 for a greedy pick).
        num_candidates: How many tokens survived the filters (1 for a greedy pick).
    """

    token_id: int
    token_rank: int
    token_prob: float
    num_candidates: int


@dataclass(frozen=True, slots=True)
class BatchSelectionResult:
    """The tokens chosen for each row: ``(rows,)`` arrays of the logits' kind and device.

    Attributes:
        token_id: int64 vocabulary indices.
        token_rank: int64 positions in the canonical order.
        token_prob: float64 probabilities after filters and renormalisation
            (float32 on devices without float64).
        num_candidates: int64 counts of tokens that survived the filters.
    """

    token_id: Array
    token_rank: Array
    token_prob: Array
    num_candidates: Array


@dataclass(frozen=True, slots=True)
class _RowParams:
    """Per-row parameters as ``(rows,)`` arrays on the logits' device."""

    temperature: Any
    top_k: Any
    top_p: Any
    min_p: Any
    u: Any

    def take(self, xp: Backend, mask: Any) -> _RowParams:
        return _RowParams(
            xp.take_rows(self.temperature, mask),
            xp.take_rows(self.top_k, mask),
            xp.take_rows(self.top_p, mask),
            xp.take_rows(self.min_p, mask),
            None if self.u is None else xp.take_rows(self.u, mask),
        )


class TokenSelector:
    """Chooses tokens from logits with a uniform value u per row, through the filtered CDF.

    Order of operations per row: top-k, softmax(logits / T), top-p, min-p,
    renormalise, then the first token (in the canonical order: probability
    descending, ties to the lower token id) whose cumulative mass exceeds u.
    ``u -> 0`` picks the most probable token. ``T <= 0`` is greedy.
    ``top_k`` of 0 or -1, ``top_p == 1`` and ``min_p == 0`` disable their filter.
    Top-k keeps exactly k tokens (ties at the boundary to the lower ids).

    A selector keeps scratch buffers between calls (one full-vocabulary buffer
    per device), so use one instance per thread.

    Args:
        head_size: How many of the largest logits the batch path examines before
            it falls back to wider heads and finally to sorting the row. Results
            do not depend on it, only speed does.

    Raises:
        TokenSelectionError: ``head_size`` is not a positive integer.
    """

    def __init__(self, *, head_size: int = DEFAULT_HEAD_SIZE) -> None:
        if isinstance(head_size, bool) or not isinstance(head_size, int) or head_size < 1:
            msg = f"head_size must be a positive integer; got {head_size!r}"
            raise TokenSelectionError(msg)
        self.head_size = head_size
        self._backends: dict[tuple[str, str], Backend] = {}

    def select(
        self,
        logits: Array,
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        u: float,
        min_p: float = 0.0,
    ) -> SelectionResult:
        """Choose one token from a 1-D row of logits.

        Args:
            logits: Shape ``(vocab,)``, floating dtype; ``-inf`` marks banned tokens.
            temperature: Softmax temperature; ``<= 0`` selects greedily.
            top_k: Keep the k most probable tokens; 0 or -1 disables.
            top_p: Keep the smallest prefix whose mass reaches p, in (0, 1]; 1 disables.
            u: The uniform value in (0, 1) that drives the choice.
            min_p: Keep tokens with probability >= min_p * max probability, in [0, 1); 0 disables.

        Returns:
            The chosen token with its rank, probability and the candidate count.

        Raises:
            TokenSelectionError: Bad logits (dtype, shape, NaN, +inf, no finite entry)
                or a parameter out of range.
        """
        xp = self._backend(logits)
        check_logits(xp, logits, ndim=1, error=TokenSelectionError)
        batch = self.select_batch(
            logits[None],
            temperature=_scalar("temperature", temperature, integer=False),
            top_k=int(_scalar("top_k", top_k, integer=True)),
            top_p=_scalar("top_p", top_p, integer=False),
            u=_scalar("u", u, integer=False),
            min_p=_scalar("min_p", min_p, integer=False),
        )
        return SelectionResult(
            token_id=int(xp.to_host_list(batch.token_id)[0]),
            token_rank=int(xp.to_host_list(batch.token_rank)[0]),
            token_prob=float(xp.to_host_list(batch.token_prob)[0]),
            num_candidates=int(xp.to_host_list(batch.num_candidates)[0]),
        )

    def select_batch(
        self,
        logits: Array,
        *,
        temperature: Array | float,
        top_k: Array | int,
        top_p: Array | float,
        u: Array | float,
        min_p: Array | float = 0.0,
        validate: bool = True,
    ) -> BatchSelectionResult:
        """Choose one token per row of a ``(rows, vocab)`` block of logits.

        On a torch tensor everything runs on the tensor's device, vectorised
        over the rows; only a few per-batch flags cross to the host. This is
        `prepare_batch` followed by `PreparedSelection.select`.

        Args:
            logits: Shape ``(rows, vocab)``, floating dtype (half, bfloat16,
                single, double); ``-inf`` marks banned tokens.
            temperature: Per-row temperatures, a scalar or an array of shape ``(rows,)``.
            top_k: Per-row top-k, integers; 0 or -1 disables.
            top_p: Per-row top-p in (0, 1]; 1 disables.
            u: Per-row uniform values in (0, 1).
            min_p: Per-row min-p in [0, 1); 0 disables.
            validate: Check parameter values and logits for NaN, +inf and rows
                without a finite entry (vectorised: a few operations on
                ``(rows,)`` arrays and a host transfer for the parameters, one
                for u). Pass False only when the caller has already checked the
                values, e.g. at request admission; bad values then give
                unspecified (but in-range) tokens instead of an error. Types and
                shapes are always checked.

        Returns:
            Arrays of shape ``(rows,)`` of the same kind and on the same device as ``logits``.

        Raises:
            TokenSelectionError: Bad logits or a parameter out of range, naming
                the value, the row and what is allowed.
        """
        prepared = self.prepare_batch(
            logits,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            validate=validate,
        )
        return prepared.select(u)

    def prepare_batch(
        self,
        logits: Array,
        *,
        temperature: Array | float,
        top_k: Array | int,
        top_p: Array | float,
        min_p: Array | float = 0.0,
        validate: bool = True,
        host_top_k: np.ndarray | None = None,
    ) -> PreparedSelection:
        """Everything of `select_batch` that does not depend on u: candidates, order, masses.

        A caller that waits for its u (an entropy fetch) can do this work in the
        meantime and finish with `PreparedSelection.select`; the result is the
        same as `select_batch` with that u. ``logits`` and the parameter arrays
        are read again by ``select`` and must not change in between.

        Args:
            logits: As for `select_batch`.
            temperature: As for `select_batch`.
            top_k: As for `select_batch`.
            top_p: As for `select_batch`.
            min_p: As for `select_batch`.
            validate: As for `select_batch` (u is checked by ``select``).
            host_top_k: The rows' top-k as a host array, when the caller knows it
                (and ``validate`` is False): the first head is sized from it
                without reading the device, as if every row were sampled.

        Returns:
            The prepared selection, to be finished with ``select(u)``.

        Raises:
            TokenSelectionError: Bad logits or a parameter out of range.
        """
        values: dict[str, object] = {
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "min_p": min_p,
        }
        small = small_host_view(logits)
        as_tensors = small is not None
        if small is not None:
            # Same code on zero-copy numpy views (see SMALL_HOST_ELEMENTS); results back as tensors.
            logits = small
            values = {k: _host_param(k, v, integer=k == "top_k") for k, v in values.items()}
        xp = self._backend(logits)
        check_logits(xp, logits, ndim=2, error=TokenSelectionError)
        rows = logits.shape[0]
        params = _RowParams(
            **{k: _row_param(xp, k, v, rows, integer=k == "top_k") for k, v in values.items()},
            u=None,
        )
        if host_top_k is not None and not validate:
            head = self._head_from_host(host_top_k)
        else:
            head = self._first_head(xp, params, validate=validate)
        x = xp.contiguous_rows(logits)
        with np.errstate(all="ignore"):  # -inf arithmetic and underflow are expected here
            filtered = _filter_rows(xp, x, params, head, check=validate)
        return PreparedSelection(
            xp, x, params, head, filtered, validate=validate, as_tensors=as_tensors
        )

    def _backend(self, logits: object) -> Backend:
        if is_torch_tensor(logits):
            key = ("torch", str(logits.device))  # type: ignore[attr-defined]
        elif isinstance(logits, np.ndarray):
            key = ("numpy", "cpu")
        else:
            msg = f"logits must be a numpy array or a torch tensor; got {type(logits).__name__}"
            raise TokenSelectionError(msg)
        xp = self._backends.get(key)
        if xp is None:
            xp = self._backends[key] = backend_for(logits)
        return xp

    def _head_from_host(self, top_k: np.ndarray) -> int:
        """The first head for rows of these top-k (0 or -1: off), all taken as sampled."""
        if top_k.size == 0:
            return 1
        kmax = int(top_k.max())
        if bool((top_k <= 0).any()):
            return max(kmax, self.head_size)
        return max(kmax, 1)

    def _first_head(self, xp: Backend, params: _RowParams, *, validate: bool) -> int:
        """Validate the parameters and size the first head, with one host transfer."""
        sampled = params.temperature > 0
        k_on = params.top_k > 0
        kmax = xp.amax(xp.where(sampled & k_on, params.top_k, 0), 0)
        unlimited = (sampled & ~k_on).any()
        flags = [kmax, sampled.any(), unlimited]
        bad = _bad_values(params) if validate else {}
        flags += [mask.any() for mask in bad.values()]
        host = xp.to_host_list(xp.stack([xp.asarray(f, np.int64) for f in flags]))
        for (name, mask), is_bad in zip(bad.items(), host[3:], strict=True):
            if is_bad:
                _raise_bad_value(xp, name, mask, getattr(params, name))
        kmax_host, any_sampled, any_unlimited = host[:3]
        if not any_sampled:
            return 1
        if any_unlimited:
            return max(int(kmax_host), self.head_size)
        return max(int(kmax_host), 1)


class PreparedSelection:
    """A batch selection with everything but u done; built by `TokenSelector.prepare_batch`.

    ``select(u)`` applies the inverse CDF at each row's u and returns what
    `TokenSelector.select_batch` would. It may be called more than once.
    """

    __slots__ = ("_as_tensors", "_filtered", "_head", "_params", "_validate", "_x", "_xp")

    def __init__(
        self,
        xp: Backend,
        x: Any,
        params: _RowParams,
        head: int,
        filtered: _Filtered,
        *,
        validate: bool,
        as_tensors: bool,
    ) -> None:
        self._xp = xp
        self._x = x
        self._params = params
        self._head = head
        self._filtered = filtered
        self._validate = validate
        self._as_tensors = as_tensors

    @property
    def rows(self) -> int:
        """How many rows the selection covers."""
        return int(self._x.shape[0])

    def select(self, u: Array | float) -> BatchSelectionResult:
        """Choose each row's token at its u.

        Args:
            u: Per-row uniform values in (0, 1), a scalar or an array of shape
                ``(rows,)`` of the logits' kind (a CPU tensor for small CPU
                tensors, which run on numpy views).

        Returns:
            As `TokenSelector.select_batch`.

        Raises:
            TokenSelectionError: u of the wrong kind, shape or (when validating) value.
        """
        xp = self._xp
        value: object = _host_param("u", u, integer=False) if self._as_tensors else u
        u_rows = _row_param(xp, "u", value, self.rows, integer=False)
        if self._validate:
            bad = ~((u_rows > 0) & (u_rows < 1))
            if xp.any(bad):
                _raise_bad_value(xp, "u", bad, u_rows)
        params = _RowParams(
            temperature=self._params.temperature,
            top_k=self._params.top_k,
            top_p=self._params.top_p,
            min_p=self._params.min_p,
            u=u_rows,
        )
        with np.errstate(all="ignore"):
            token, rank, prob, count = _finish_rows(xp, self._x, params, self._head, self._filtered)
        if self._as_tensors:
            import torch  # noqa: PLC0415 - only reached with a torch tensor in hand

            return BatchSelectionResult(
                token_id=torch.from_numpy(token),
                token_rank=torch.from_numpy(rank),
                token_prob=torch.from_numpy(prob),
                num_candidates=torch.from_numpy(count),
            )
        return BatchSelectionResult(
            token_id=token, token_rank=rank, token_prob=prob, num_candidates=count
        )


def _scalar(name: str, value: object, *, integer: bool) -> float | int:
    """Check a Python scalar parameter of :meth:`TokenSelector.select`."""
    if isinstance(value, bool) or not isinstance(
        value, numbers.Integral if integer else numbers.Real
    ):
        kind = "an integer" if integer else "a real number"
        msg = f"{name} must be {kind}; got {value!r} ({type(value).__name__})"
        raise TokenSelectionError(msg)
    return int(value) if integer else float(value)  # type: ignore[call-overload]


def _check_kind(xp: Backend, name: str, arr: Any, *, integer: bool) -> None:
    """Reject a parameter array of the wrong kind of number, naming its dtype."""
    if not (xp.is_integer(arr) if integer else xp.is_real(arr)):
        kind = "integer" if integer else "real"
        msg = f"{name} must hold {kind} numbers; got dtype {xp.dtype_name(arr)}"
        raise TokenSelectionError(msg)


def _host_param(name: str, value: object, *, integer: bool) -> object:
    """A CPU tensor parameter as a numpy view, its kind checked first (torch's dtype named)."""
    if is_torch_tensor(value):
        _check_kind(backend_for(value), name, value, integer=integer)
    return host_view(value)


def _row_param(xp: Backend, name: str, value: object, rows: int, *, integer: bool) -> Any:
    """Turn a scalar or a ``(rows,)`` array into a ``(rows,)`` array on the logits' device."""
    dtype = xp.int_dtype if integer else xp.compute_dtype
    if isinstance(value, np.ndarray) or is_torch_tensor(value):
        if is_torch_tensor(value) and xp.kind != "torch":
            msg = f"{name} is a torch tensor but the logits are a numpy array; pass one kind"
            raise TokenSelectionError(msg)
        arr: Any = value
        _check_kind(xp if xp.owns(arr) else backend_for(arr), name, arr, integer=integer)
        shape = tuple(arr.shape)
        if shape not in ((), (rows,)):
            msg = f"{name} must be a scalar or have shape ({rows},); got shape {shape}"
            raise TokenSelectionError(msg)
        converted = xp.asarray(arr, dtype)
        if shape == ():
            return xp.full((rows,), 0, dtype) + converted
        return converted
    return xp.full((rows,), _scalar(name, value, integer=integer), dtype)


def _bad_values(params: _RowParams) -> dict[str, Any]:
    """Per-parameter masks of rows with out-of-range values (NaN fails every test).

    u is checked on its own, when it arrives (`PreparedSelection.select`).
    """
    t, p, mp = params.temperature, params.top_p, params.min_p
    return {
        # T <= 0 (even -inf) is the documented greedy switch; NaN and +inf are not.
        "temperature": ~(t < float("inf")),
        "top_k": params.top_k < -1,
        "top_p": ~((p > 0) & (p <= 1)),
        "min_p": ~((mp >= 0) & (mp < 1)),
    }


_ALLOWED = {
    "temperature": "a finite number (<= 0 selects greedily)",
    "top_k": "an integer >= 1, or 0 or -1 to disable top-k",
    "top_p": "in (0, 1] (1 disables top-p)",
    "min_p": "in [0, 1) (0 disables min-p)",
    "u": "in the open interval (0, 1)",
}


def _raise_bad_value(xp: Backend, name: str, mask: Any, values: Any) -> None:
    row = xp.to_host_list(mask).index(True)
    value = xp.to_host_list(values)[row]
    msg = f"{name} must be {_ALLOWED[name]}; got {value!r} at row {row}"
    raise TokenSelectionError(msg)


def _largest(xp: Backend, x: Any, k: int) -> tuple[Any, Any, Any]:
    """The ``k`` largest logits of each row (any order), their ids, and each row's maximum.

    For long rows this runs in two stages: split the row into ``g`` strided
    groups of ``c = n // g`` chunks, take the maximum of each chunk in one
    vectorised pass, pick the k chunks with the largest maxima, and select
    among their elements (and the ``n - g * c`` trailing ones). Exact: an
    element outside those chunks is at most its chunk's maximum, and each of
    the k chosen chunks holds an element at least that large, so it cannot be
    among the k largest unless tied with the smallest of them, and ties at
    that boundary are excluded from the exact part of a head anyway.
    """
    rows, n = x.shape
    groups = chunk_groups(n, k)
    if groups == 1:
        values, ids = xp.topk_unordered(x, k)
        return values, ids, xp.amax(x, 1)
    chunks = n // groups
    chunk_max = xp.amax(xp.chunk_view(x, groups, chunks), 1)
    row_max = xp.amax(chunk_max, 1)
    _, chunk_ids = xp.topk_unordered(chunk_max, k)
    ids = (chunk_ids[:, :, None] + xp.arange(groups)[None, None, :] * chunks).reshape(
        rows, k * groups
    )
    start = groups * chunks
    if start < n:
        rest = xp.broadcast_rows(xp.arange(n - start)[None, :] + start, rows)
        ids = xp.concat([ids, rest])
        row_max = xp.maximum(row_max, xp.amax(x[:, start:], 1))
    values, pick = xp.topk_unordered(xp.gather(x, ids), k)
    return values, xp.gather(ids, pick), row_max


def _select_rows(
    xp: Backend, x: Any, params: _RowParams, head: int, *, check: bool
) -> tuple[Any, Any, Any, Any]:
    """Select for every row of ``x``, retrying undecided rows with wider heads."""
    return _finish_rows(xp, x, params, head, _filter_rows(xp, x, params, head, check=check))


def _filter_rows(xp: Backend, x: Any, params: _RowParams, head: int, *, check: bool) -> _Filtered:
    """Take each row's head (or sort the row) and apply the filters: all but u."""
    rows, n = x.shape
    if (head + 1) * _FULL_SORT_FRACTION >= n:
        order = xp.argsort_desc_stable(x)
        values, ids = xp.gather(x, order), order
        row_max = xp.amax(x, 1) if check else None
        valid_len = xp.count(values > float("-inf"))
        tail_empty = xp.full((rows,), True, bool)
        boundary = None
    else:
        raw_values, raw_ids, row_max = _largest(xp, x, head + 1)
        # Canonical order of the head: ids ascending, then a stable sort by value descending.
        by_id = xp.argsort_asc(raw_ids)
        raw_values, raw_ids = xp.gather(raw_values, by_id), xp.gather(raw_ids, by_id)
        by_value = xp.argsort_desc_stable(raw_values)
        raw_values, raw_ids = xp.gather(raw_values, by_value), xp.gather(raw_ids, by_value)
        boundary = raw_values[:, head]
        values, ids = raw_values[:, :head], raw_ids[:, :head]
        # Only logits strictly above the smallest fetched one are surely all here, in order.
        valid_len = xp.count(values > boundary[:, None])
        tail_empty = boundary == float("-inf")
    if check:
        check_row_max(xp, row_max, error=TokenSelectionError)
    return _filter(
        xp,
        x,
        values,
        ids,
        valid_len=valid_len,
        tail_empty=tail_empty,
        boundary=boundary,
        params=params,
    )


def _finish_rows(
    xp: Backend, x: Any, params: _RowParams, head: int, filtered: _Filtered
) -> tuple[Any, Any, Any, Any]:
    """Pick each row's token at its u; rows the head cannot decide go round with a wider one."""
    token, rank, prob, count, retry = _pick(xp, x, filtered, params.u)
    if is_sync_free():
        if (head + 1) * _FULL_SORT_FRACTION >= x.shape[1]:
            return token, rank, prob, count  # a fully sorted row is always decided
        # The step's one host read: which rows (usually none) need a wider head. As
        # indices, the wider round reads nothing more unless it too is undecided.
        retry = xp.row_indices(retry)
        if retry.shape[0] == 0:
            return token, rank, prob, count
    if is_sync_free() or xp.any(retry):
        logger.debug("head of %d undecided for some rows; widening it", head)
        wider = head * _HEAD_GROWTH
        sub = _select_rows(xp, xp.take_rows(x, retry), params.take(xp, retry), wider, check=False)
        for out, part in zip((token, rank, prob, count), sub, strict=True):
            xp.put_rows_(out, retry, part)
    return token, rank, prob, count


@dataclass(frozen=True, slots=True)
class _Filtered:
    """A head after the filters: what the inverse CDF at u needs (see `_filter`)."""

    ids: Any
    z: Any
    cum: Any
    total: Any
    kept: Any
    cut: Any
    unknown: Any
    greedy: Any
    valid_len: Any
    blind: Any
    greedy_retry: Any
    in_prefix: Any
    last_index: Any


def _filter(
    xp: Backend,
    x: Any,
    values: Any,
    ids: Any,
    *,
    valid_len: Any,
    tail_empty: Any,
    boundary: Any,
    params: _RowParams,
) -> _Filtered:
    """Apply the filters to a head (or a fully sorted row): everything before u.

    Args:
        x: The rows' full logits, read only for the mass and size of the tail.
        values: ``(rows, width)`` logits in canonical order (exact for the first ``valid_len``).
        ids: Their token ids.
        valid_len: ``(rows,)`` how many leading entries are exact.
        tail_empty: ``(rows,)`` true when no finite logit lies beyond ``valid_len``.
        boundary: ``(rows,)`` the largest logit not known to be in order, or None.
        params: Per-row parameters (u is not read).

    Returns:
        The kept prefix's unnormalised probabilities, cumulative and total mass,
        and what `_pick` needs to tell whether the head decides a row.
    """
    rows, width = values.shape
    pos = xp.arange(width)[None, :]
    valid = pos < valid_len[:, None]
    greedy = params.temperature <= 0
    temp = xp.where(greedy, 1.0, params.temperature)
    head = xp.to_compute(values)
    top = head[:, :1]
    # Unnormalised probabilities relative to the row's most probable token (z = 1 there).
    z = xp.where(valid, xp.exp((head - top) / temp[:, None]), 0.0)

    k = params.top_k
    k_on = k > 0
    k_known = k_on & ((k <= valid_len) | tail_empty)
    zk = xp.where(~k_on[:, None] | (pos < k[:, None]), z, 0.0)
    cum = xp.cumsum(zk)
    needs_tail = ~k_on & ~tail_empty
    mass = cum[:, -1] + xp.where(
        needs_tail,
        _tail_mass(
            xp,
            x,
            top=head[:, 0],
            temp=temp,
            ids=ids,
            valid=valid,
            needed=needs_tail & ~greedy,
        ),
        0.0,
    )

    top_p = params.top_p
    p_on = top_p < 1
    cum_p = cum / mass[:, None]
    before = xp.concat([xp.full((rows, 1), 0.0, xp.compute_dtype), cum_p[:, :-1]])
    n_p = xp.count(valid & (before < top_p[:, None]))
    last = _at(xp, cum_p, valid_len - 1)
    # ``mass`` is the whole kept mass without top-k (it includes the tail's) and with a
    # known top-k; with top-k members hidden beyond the exact prefix (a tie at the head's
    # boundary), it is too small, top-p's cut may fall anywhere, and the row must go round
    # with a wider head whatever the other filters say ("blind").
    blind = p_on & k_on & ~k_known
    p_known = p_on & (k_known | tail_empty | (~k_on & (valid_len > 0) & (last >= top_p)))

    min_p = params.min_p
    m_on = min_p > 0
    n_m = xp.count(valid & (z >= min_p[:, None]))
    if boundary is None:
        beyond_kept = xp.full((rows,), False, bool)
    else:
        z_boundary = xp.exp((xp.to_compute(boundary) - head[:, 0]) / temp)
        beyond_kept = z_boundary >= min_p
    m_known = m_on & (k_known | tail_empty | (n_m < valid_len) | ~beyond_kept)

    def cut_at(known: Any, length: Any) -> Any:
        return xp.where(known, length, _NO_CUT)

    n_known = xp.minimum(
        xp.minimum(cut_at(k_known, k), cut_at(p_known, n_p)),
        xp.minimum(cut_at(m_known, n_m), cut_at(tail_empty, valid_len)),
    )
    unknown = (k_on & ~k_known) | (p_on & ~p_known) | (m_on & ~m_known)
    cut = n_known < _NO_CUT
    kept = xp.maximum(xp.where(cut, n_known, valid_len), xp.full((rows,), 1, np.int64))
    total = xp.where(cut, _at(xp, cum, kept - 1), mass)
    in_prefix = pos < kept[:, None]
    return _Filtered(
        ids=ids,
        z=z,
        cum=cum,
        total=total,
        kept=kept,
        cut=cut,
        unknown=unknown,
        greedy=greedy,
        valid_len=valid_len,
        blind=blind,
        greedy_retry=(valid_len == 0) & ~tail_empty,
        in_prefix=in_prefix,
        # Float safety for u next to 1: never step past the last token that adds mass.
        last_index=xp.count(in_prefix & (cum < total[:, None])),
    )


def _pick(xp: Backend, x: Any, f: _Filtered, u: Any) -> tuple[Any, Any, Any, Any, Any]:
    """The inverse CDF at u over a filtered head.

    Returns:
        token id, rank, probability, candidate count, and a mask of rows the
        head could not decide.
    """
    target = u * f.total
    index = xp.count(f.in_prefix & (f.cum <= target[:, None]))
    index = xp.minimum(index, f.last_index)
    # A filter left unknown cuts beyond the exact prefix, so a known cut decides the row;
    # except top-p on an incomplete mass ("blind"), which may cut before it.
    undecided = (~f.cut & (f.unknown | (index >= f.valid_len))) | f.blind
    retry = xp.where(f.greedy, f.greedy_retry, undecided)
    index = xp.where(f.greedy, 0, index)

    width = f.ids.shape[-1]
    safe = xp.clip(index, 0, width - 1)
    token = _at(xp, f.ids, safe)
    prob = xp.where(f.greedy, 1.0, _at(xp, f.z, safe) / f.total)
    uncut = ~f.greedy & ~f.cut & ~retry
    count = xp.where(f.greedy, 1, xp.where(f.cut, f.kept, _finite_count(xp, x, uncut)))
    return token, index, prob, count, retry


def _at(xp: Backend, x: Any, index: Any) -> Any:
    """``x[r, index[r]]`` with the index clamped into range."""
    safe = xp.clip(index, 0, x.shape[-1] - 1)
    return xp.gather(x, safe[:, None])[:, 0]


def _tail_mass(
    xp: Backend, x: Any, *, top: Any, temp: Any, ids: Any, valid: Any, needed: Any
) -> Any:
    """Unnormalised mass of the logits outside the exact head, ``sum exp((x - top) / T)``.

    One pass over the vocabulary in single precision into a reused buffer;
    the exact head's own entries are zeroed there so that the head's mass,
    summed in double precision, is not counted twice.
    """
    rows, n = x.shape
    if not is_sync_free() and not xp.any(needed):
        return xp.full((rows,), 0.0, xp.compute_dtype)
    work = xp.work_dtype(x)
    buf = xp.scratch("tail", (rows, n), work)
    xp.exp_scaled_into(buf, x, xp.asarray(top, work), xp.asarray(1.0 / temp, work))
    xp.scatter_(buf, ids, xp.where(valid, 0.0, xp.gather(buf, ids)))
    return xp.to_compute(xp.sum(buf, 1))


def _finite_count(xp: Backend, x: Any, needed: Any) -> Any:
    """How many logits of each row are finite, computed only when some row needs it."""
    if not is_sync_free() and not xp.any(needed):
        return xp.full((x.shape[0],), x.shape[1], np.int64)
    return xp.count_finite(x)
