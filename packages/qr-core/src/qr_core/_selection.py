"""Token selection: the public selector, its prepared (u-free) step, and the results.

Per row: temperature, min-p, top-k, top-p (vLLM's order and rules, see
ARCHITECTURE.md, design note "Filter order"), renormalise, then the first
token in the *canonical order* (logits descending, equal logits by ascending
token id) whose cumulative mass exceeds ``u``. Every filter keeps a prefix of
that order. The work is done on heads of the largest logits (``_head``) by the
filters (``_filters``); one function turns a head or a fully sorted row into
a token, so the two paths share one definition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qr_core._array import Backend, backend_for, is_torch_tensor, small_host_view
from qr_core._checks import check_logits, check_row_max
from qr_core._errors import TokenSelectionError
from qr_core._full import PreparedFull, full_batch, prepare_full
from qr_core._head import filter_rows, finish_rows, first_head
from qr_core._params import (
    RowParams,
    host_param,
    raise_bad_value,
    row_param,
    scalar,
)
from qr_core._small import fused_small, run_fused

if TYPE_CHECKING:
    from qr_core._array import Array
    from qr_core._filters import Filtered

__all__ = [
    "DEFAULT_HEAD_SIZE",
    "BatchSelectionResult",
    "PreparedSelection",
    "SelectionResult",
    "TokenSelector",
]

#: Width of the first head: enough to hold u for almost every row of real model output.
DEFAULT_HEAD_SIZE = 256


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


class TokenSelector:
    """Chooses tokens from logits with a uniform value u per row, through the filtered CDF.

    Order of operations per row, vLLM's: softmax(logits / T), min-p, top-k,
    top-p on what is left, renormalise, then the first token (in the canonical
    order: probability descending, ties to the lower token id) whose cumulative
    mass exceeds u. ``u -> 0`` picks the most probable token. ``T <= 0`` is
    greedy. ``top_k`` of 0 or -1, ``top_p == 1`` and ``min_p == 0`` disable their
    filter. Top-k keeps every token whose logit is at least the k-th largest
    (ties at the k-th value all kept, as vLLM does).

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
            top_k: Keep the k most probable tokens and any tied with the k-th; 0 or -1 disables.
            top_p: Keep the smallest prefix of what min-p and top-k left whose mass
                reaches p, in (0, 1]; 1 disables.
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
            temperature=scalar("temperature", temperature, integer=False),
            top_k=int(scalar("top_k", top_k, integer=True)),
            top_p=scalar("top_p", top_p, integer=False),
            u=scalar("u", u, integer=False),
            min_p=scalar("min_p", min_p, integer=False),
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
        filters_off: bool | None = None,
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
            filters_off: Whether every row has top-k, top-p and min-p off, when the
                caller knows (None: read when it matters). Small CPU batches
                (``validate`` False) take ``qr_core._full``, which decides each row
                on the host; a batch past the limits for filtered rows only when
                every filter is off.

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
        fused = fused_small(logits)
        full = None
        if not (fused or validate) and full_batch(logits, values, filters_off):
            full = prepare_full(logits, values)  # each row on the host (qr_core._full)
        if full is not None:
            return PreparedSelection(self._backend(logits), full.x, None, 0, None, full=full)
        small = None if fused else small_host_view(logits)
        as_tensors = small is not None
        if small is not None:
            # Same code on zero-copy numpy views (see SMALL_HOST_ELEMENTS); results back as tensors.
            logits = small
            values = {k: host_param(k, v, integer=k == "top_k") for k, v in values.items()}
        xp = self._backend(logits)
        check_logits(xp, logits, ndim=2, error=TokenSelectionError)
        rows = logits.shape[0]
        params = RowParams(
            **{k: row_param(xp, k, v, rows, integer=k == "top_k") for k, v in values.items()},
            u=None,
        )
        x = xp.contiguous_rows(logits)
        if fused:  # one compiled call at select (qr_core._small)
            if validate:
                self._first_head(xp, params, validate=True)
                check_row_max(xp, xp.amax(x, 1), error=TokenSelectionError)
            return PreparedSelection(xp, x, params, 0, None, validate=validate, as_tensors=False)
        if host_top_k is not None and not validate:
            head = self._head_from_host(host_top_k)
        else:
            head = self._first_head(xp, params, validate=validate)
        with np.errstate(all="ignore"):  # -inf arithmetic and underflow are expected here
            filtered = filter_rows(xp, x, params, head, check=validate)
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

    def _first_head(self, xp: Backend, params: RowParams, *, validate: bool) -> int:
        """Validate the parameters and size the first head, with one host transfer."""
        return first_head(xp, params, self.head_size, validate=validate)


class PreparedSelection:
    """A batch selection with everything but u done; built by `TokenSelector.prepare_batch`.

    ``select(u)`` applies the inverse CDF at each row's u and returns what
    `TokenSelector.select_batch` would. It may be called more than once.
    """

    __slots__ = ("_as_tensors", "_filtered", "_full", "_head", "_params", "_validate", "_x", "_xp")

    def __init__(
        self,
        xp: Backend,
        x: Any,
        params: RowParams | None,
        head: int,
        filtered: Filtered | None,
        *,
        validate: bool = False,
        as_tensors: bool = False,
        full: PreparedFull | None = None,
    ) -> None:
        self._full = full
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
        value: object = host_param("u", u, integer=False) if self._as_tensors else u
        u_rows = row_param(xp, "u", value, self.rows, integer=False)
        if self._validate:
            bad = ~((u_rows > 0) & (u_rows < 1))
            if xp.any(bad):
                raise_bad_value(xp, "u", bad, u_rows)
        if self._full is not None:
            return BatchSelectionResult(*self._full.select_rows(xp, u_rows))
        assert self._params is not None
        params = dataclasses.replace(self._params, u=u_rows)
        with np.errstate(all="ignore"):
            if self._filtered is None:
                fused = run_fused(self._x, params)
                if fused is not None:
                    return BatchSelectionResult(*fused)
                self._head = int(self._x.shape[1])  # compiler failed: sort the rows instead
                self._filtered = filter_rows(xp, self._x, self._params, self._head, check=False)
            token, rank, prob, count = finish_rows(xp, self._x, params, self._head, self._filtered)
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
