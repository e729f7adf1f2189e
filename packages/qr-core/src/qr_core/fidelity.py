"""Exact sampling fidelity: the token distribution a fair source realises, without sampling.

`sampling_fidelity` runs the selector's own filters on a row (the full-sort
path, which every head decides alike), takes the CDF thresholds the inverse
CDF compares u with, and integrates u's null distribution over them: the
law of the byte sum S (``byte_sum_cdf``) and, for ``randomized_pit``, V's
grid of 2**53 midpoints. See ARCHITECTURE.md, design note "Sampling fidelity".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from qr_core._byte_sum import byte_sum_cdf
from qr_core._errors import SignalAmplificationError, TokenSelectionError
from qr_core._selection import TokenSelector
from qr_core.amplification import AmplifierRegistry, SignalAmplifier, ZScoreMeanAmplifier
from qr_core.randomized_pit import DEFAULT_AMPLIFIER, PIT_EDGE, RandomizedPITAmplifier

if TYPE_CHECKING:
    from qr_core._array import Array

__all__ = ["FidelityResult", "sampling_fidelity"]

_GRID = 2.0**53


@dataclass(frozen=True, slots=True)
class FidelityResult:
    """What a fair source makes the sampler choose, against what was intended.

    Attributes:
        realised: float64 ``(vocab,)``: the probability that the sampler picks
            each token when the source's bytes are independent and uniform.
        intended: float64 ``(vocab,)``: the filtered, renormalised softmax.
        tvd: Total variation distance ``0.5 * sum(|realised - intended|)``.
        amplifier: The amplifier's registry name.
        sample_count: Bytes summed into S per token.
    """

    realised: npt.NDArray[np.float64]
    intended: npt.NDArray[np.float64]
    tvd: float
    amplifier: str
    sample_count: int


def sampling_fidelity(
    logits: Array,
    *,
    sample_count: int,
    amplifier: str | SignalAmplifier = DEFAULT_AMPLIFIER,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
) -> FidelityResult:
    """The exact token distribution the sampler realises for one row under a fair source.

    Args:
        logits: One row, shape ``(vocab,)`` (numpy or a CPU tensor).
        sample_count: Bytes summed into S per token (``randomized_pit`` reads 7 more for V).
        amplifier: ``randomized_pit`` or ``zscore_mean``, by name or as an instance.
        temperature: As for ``TokenSelector.select``.
        top_k: As for ``TokenSelector.select``.
        top_p: As for ``TokenSelector.select``.
        min_p: As for ``TokenSelector.select``.

    Returns:
        The realised and intended distributions and their total variation distance.

    Raises:
        TokenSelectionError: Bad logits or filter settings.
        SignalAmplificationError: sample_count < 1 or an amplifier whose u law is not known here.
    """
    amp = AmplifierRegistry.build(amplifier) if isinstance(amplifier, str) else amplifier
    if not isinstance(amp, (RandomizedPITAmplifier, ZScoreMeanAmplifier)):
        msg = (
            "amplifier must be randomized_pit or zscore_mean (the amplifiers whose law of u "
            f"is known here); got {type(amp).__name__}"
        )
        raise SignalAmplificationError(msg)
    if isinstance(sample_count, bool) or not isinstance(sample_count, int) or sample_count < 1:
        msg = f"sample_count must be an integer >= 1; got {sample_count!r}"
        raise SignalAmplificationError(msg)
    row = np.asarray(logits.numpy() if hasattr(logits, "numpy") else logits)
    if row.ndim != 1:
        msg = f"logits must be one row of shape (vocab,); got shape {row.shape}"
        raise TokenSelectionError(msg)
    vocab = row.shape[0]
    # A head as wide as the row takes the full-sort path: the whole filtered CDF at once.
    prepared = TokenSelector(head_size=vocab).prepare_batch(
        row[None], temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p
    )
    f = prepared._filtered  # the selector's own filtered CDF, read here by design
    assert f is not None  # a numpy row never takes the fused small path
    intended = np.zeros(vocab)
    realised = np.zeros(vocab)
    if bool(f.greedy[0]):
        token = int(f.ids[0, 0])
        intended[token] = realised[token] = 1.0
        return FidelityResult(realised, intended, 0.0, amp.name, sample_count)
    kept = int(f.kept[0])
    last = int(f.last_index[0])
    ids = np.asarray(f.ids[0, :kept])
    total = float(f.total[0])
    intended[ids] = np.asarray(f.z[0, :kept], dtype=np.float64) / total
    # The inverse CDF picks rank j when cum[j - 1] <= u * total < cum[j], and at most `last`.
    thresholds = np.asarray(f.cum[0, :kept], dtype=np.float64) / total
    thresholds[last:] = np.inf
    below = _u_below(amp, sample_count, thresholds)
    realised[ids] = np.diff(np.concatenate([[0.0], below]))
    tvd = 0.5 * float(np.abs(realised - intended).sum())
    return FidelityResult(realised, intended, tvd, amp.name, sample_count)


def _u_below(amp: SignalAmplifier, n: int, c: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """P(u < c) under the null, for non-decreasing thresholds c (inf for "always")."""
    table = byte_sum_cdf(n)
    cdf = table.cdf
    if isinstance(amp, RandomizedPITAmplifier):
        # u = F(S - 1) + V P(S) with V = (k + 1/2) / 2**53: on the S whose interval holds c,
        # P(u < c) = F(S - 1) + P(S) * #{k : V < t} / 2**53, t = (c - F(S - 1)) / P(S).
        idx = np.searchsorted(cdf, c, side="right")
        inside = (idx > 0) & (idx < len(cdf))
        i = np.clip(idx, 1, len(cdf) - 1)
        lo, hi = cdf[i - 1], cdf[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(hi > lo, (c - lo) / (hi - lo), 0.0)
        grid = np.clip(np.ceil(t * _GRID - 0.5), 0.0, _GRID) / _GRID
        out = np.where(inside, lo + (hi - lo) * grid, np.where(idx == 0, 0.0, 1.0))
        edge = PIT_EDGE
    else:
        assert isinstance(amp, ZScoreMeanAmplifier)
        sums = np.arange(table.lo, table.hi + 1, dtype=np.int64)
        u_of_s, _, _ = amp.u_of_sums(sums, n)
        # u is non-decreasing in S: P(u < c) = P(S < first S with u >= c).
        count = np.searchsorted(u_of_s, c, side="left")
        out = cdf[count]
        edge = amp.uniform_clamp_epsilon
    # u is clamped to [edge, 1 - edge].
    out = np.where(c <= edge, 0.0, np.where(c > 1.0 - edge, 1.0, out))
    result: npt.NDArray[np.float64] = np.maximum.accumulate(out)
    return result
