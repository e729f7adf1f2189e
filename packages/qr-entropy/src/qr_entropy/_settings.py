"""Settings of qr_entropy, read from ``QR_*`` environment variables and a ``.env`` file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qr_entropy._health import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_MIN_ENTROPY_PER_BYTE,
    MAX_FALSE_ALARM_RATE,
    MIN_ENTROPY_LOWER,
    MIN_ENTROPY_UPPER,
    MIN_FALSE_ALARM_RATE,
)

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "QR_SETTINGS_CONFIG", "EntropySettings", "FallbackMode"]

#: 64 MiB: room for a batch of 1024 rows of 20,480 bytes with margin, far below
#: what would exhaust memory by a typo (n = 10**12).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

FallbackMode = Literal["error", "system", "mock_uniform"]


#: The settings layout every qr-sampler package shares: ``QR_<FIELD>`` variables and
#: a ``.env`` file in the working directory (keyword arguments win over both), with
#: unknown ``QR_*`` keys ignored so that one ``.env`` serves every package.
QR_SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix="QR_",
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
    validate_default=True,
)


class EntropySettings(BaseSettings):
    """Where the bytes come from, what happens when that source fails, and the guards.

    Every field is read from the environment variable ``QR_<FIELD_NAME>`` (for
    example ``QR_ENTROPY_SOURCE_TYPE``) or from a ``.env`` file in the working
    directory; keyword arguments win over both. Unknown ``QR_*`` keys are
    ignored so that one ``.env`` can hold the settings of every qr-sampler package.
    """

    model_config = QR_SETTINGS_CONFIG

    entropy_source_type: str = Field(
        default="system",
        min_length=1,
        description="Name of the primary entropy source in the qr_entropy.sources registry.",
    )
    fallback_mode: FallbackMode = Field(
        default="system",
        description=(
            "What to use when the primary source is unavailable: 'error' raises, "
            "'system' uses os.urandom, 'mock_uniform' uses the mock source. "
            "Every fallback fetch is flagged in its provenance."
        ),
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1,
        le=2**34,
        description="Largest number of bytes one fetch (rows * n for a block) may ask for.",
    )
    mock_seed: int | None = Field(
        default=None,
        ge=0,
        description="Seed of the mock_uniform source; unset draws a fresh seed from the OS.",
    )
    mock_mean_shift: float = Field(
        default=0.0,
        gt=-127.5,
        lt=127.5,
        description=(
            "Shift of the mock_uniform byte mean away from 127.5 (exponential tilting); "
            "0 gives exactly uniform bytes."
        ),
    )
    timing_min_entropy_per_read: float = Field(
        default=0.25,
        ge=MIN_ENTROPY_LOWER,
        le=MIN_ENTROPY_UPPER,
        description=(
            "Claimed min-entropy of one timer delta of timing_noise, in bits; sets how "
            "many deltas feed each SHA-256 output and the raw-delta health-test cutoffs."
        ),
    )
    health_false_alarm_rate: float = Field(
        default=DEFAULT_FALSE_ALARM_RATE,
        ge=MIN_FALSE_ALARM_RATE,
        le=MAX_FALSE_ALARM_RATE,
        description=(
            "False-alarm probability α per decision of the SP 800-90B continuous "
            "health tests (default 2**-40)."
        ),
    )
    health_min_entropy_per_byte: float = Field(
        default=DEFAULT_MIN_ENTROPY_PER_BYTE,
        ge=MIN_ENTROPY_LOWER,
        le=MIN_ENTROPY_UPPER,
        description=(
            "Assessed min-entropy of one byte of a physical source, in bits; "
            "sets the health-test cutoffs."
        ),
    )

    @field_validator("entropy_source_type")
    @classmethod
    def _strip_source_type(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("entropy_source_type must name a source, got a blank string")
        return stripped
