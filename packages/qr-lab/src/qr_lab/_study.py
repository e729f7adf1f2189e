"""The study file (TOML): its schema, validation with errors naming the field, and loading."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from qr_lab._admission import check_request_args
from qr_lab._errors import StudyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["EXCLUSIONS", "PRIMARY_STATISTICS", "Condition", "Study", "load_study"]

#: Exclusions a study may declare, in the order they are applied.
EXCLUSIONS = ("superseded_prefill", "failed", "fallback", "unhealthy")

#: Statistics the primary test may be.
PRIMARY_STATISTICS = ("stouffer_z", "chi2", "ks_u", "difference")

Exclusion = Literal["superseded_prefill", "failed", "fallback", "unhealthy"]

_CONDITION_FIELDS = frozenset({"name", "description", "predicted"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyInfo(_Strict):
    """``[study]``: what the study is."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""


class Engine(_Strict):
    """``[engine]``: where the trials are sent."""

    endpoint: str = Field(default="http://127.0.0.1:8000/v1", pattern=r"^https?://")
    model: str | None = None
    concurrency: int = Field(default=4, ge=1, le=256)
    timeout_s: float = Field(default=300.0, gt=0.0)
    #: Settings of the engine ``qr-lab run --embedded`` starts (QR_* variables).
    embedded_env: dict[str, str] = Field(default_factory=dict)


class Design(_Strict):
    """``[design]``: how many trials, how long, in which order."""

    trials_per_condition: int = Field(ge=1, le=1_000_000)
    tokens_per_trial: int = Field(ge=1, le=100_000)
    seed: int
    blind: bool = True


class Prompts(_Strict):
    """``[prompts]``: inline prompts, or a file of one prompt per line (or both)."""

    inline: list[str] = Field(default_factory=list)
    file: str | None = None
    #: Filled from ``file`` when the study is loaded.
    from_file: list[str] = Field(default_factory=list)

    @field_validator("file")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        base = (info.context or {}).get("base", Path("."))
        path = (Path(base) / value).resolve()
        if not path.is_file():
            raise ValueError(f"prompt file {str(path)!r} does not exist")
        return value

    @model_validator(mode="after")
    def _some_prompt(self) -> Prompts:
        if not self.inline and not self.file:
            raise ValueError("give prompts: inline = [...] or file = 'prompts.txt'")
        return self

    def all(self) -> list[str]:
        """Every prompt, inline first."""
        return [*self.inline, *self.from_file]


class Condition(BaseModel):
    """One ``[[conditions]]`` entry: a name, a predicted direction and ``qr_*`` arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    predicted: Literal["positive", "negative", "none"] = "none"

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = [k for k in data if k not in _CONDITION_FIELDS and not str(k).startswith("qr_")]
        if unknown:
            raise ValueError(
                f"unknown condition key {unknown[0]!r}; allowed: name, description, predicted "
                "and qr_* request arguments"
            )
        problems = check_request_args({k: v for k, v in data.items() if str(k).startswith("qr_")})
        if problems:
            raise ValueError("; ".join(problems))
        return data

    def request_args(self) -> dict[str, Any]:
        """The condition's ``qr_*`` request arguments."""
        return dict(self.model_extra or {})


class Analysis(_Strict):
    """``[analysis]``: the pre-registered analysis."""

    primary: Literal["stouffer_z", "chi2", "ks_u", "difference"] = "stouffer_z"
    condition: str
    control: str | None = None
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    sidedness: Literal["one-sided", "two-sided"] = "two-sided"
    planned_tokens: int | None = Field(default=None, ge=1)
    exclude: list[Exclusion] = Field(
        default_factory=lambda: list[Exclusion](["superseded_prefill", "failed", "fallback"])
    )
    permutations: int = Field(default=10_000, ge=100, le=10_000_000)
    calibration_studies: int = Field(default=400, ge=0, le=100_000)


class Study(_Strict):
    """A whole study file."""

    study: StudyInfo
    engine: Engine = Field(default_factory=Engine)
    design: Design
    prompts: Prompts
    conditions: list[Condition] = Field(min_length=1)
    analysis: Analysis

    @model_validator(mode="after")
    def _cross(self) -> Study:
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"conditions: names must be unique; got {names}")
        a = self.analysis
        if a.condition not in names:
            raise ValueError(f"analysis.condition={a.condition!r} is not a condition: {names}")
        if a.control is not None and (a.control not in names or a.control == a.condition):
            raise ValueError(f"analysis.control={a.control!r} must be another condition: {names}")
        if a.primary == "difference" and a.control is None:
            raise ValueError("analysis.control is required when analysis.primary = 'difference'")
        predicted = self.condition(a.condition).predicted
        if (
            a.sidedness == "one-sided"
            and predicted == "none"
            and a.primary
            in (
                "stouffer_z",
                "difference",
            )
        ):
            raise ValueError(
                f"analysis.sidedness='one-sided' needs a predicted direction: set predicted = "
                f"'positive' or 'negative' on condition {a.condition!r}"
            )
        return self

    def condition(self, name: str) -> Condition:
        """The condition called ``name``."""
        return next(c for c in self.conditions if c.name == name)

    def normalized(self) -> dict[str, Any]:
        """The study as plain data, prompts resolved: what registration hashes."""
        data = self.model_dump(mode="json")
        data["prompts"] = {"all": self.prompts.all()}
        return data


def _loc(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """``conditions[1] (control).qr_top_k`` from a pydantic error location."""
    out = ""
    node: Any = data
    for part in loc:
        child = _child(node, part)
        if isinstance(part, int):
            name = child.get("name") if isinstance(child, dict) else None
            out += f"[{part}]" + (f" ({name})" if name else "")
        else:
            out += ("." if out else "") + str(part)
        node = child
    return out or "(study)"


def _child(node: Any, part: int | str) -> Any:
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    if isinstance(node, dict):
        return node.get(part)
    return None


def parse_study(data: dict[str, Any], base: Path, source: str = "study") -> Study:
    """Validate parsed TOML; ``base`` is the directory relative prompt files are read from."""
    try:
        study = Study.model_validate(data, context={"base": base})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {_loc(tuple(err['loc']), data)}: {msg}")
        raise StudyError(f"{source} is invalid:\n" + "\n".join(lines)) from None
    if study.prompts.file:
        path = (base / study.prompts.file).resolve()
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise StudyError(f"{source} is invalid:\n  prompts.file: {str(path)!r} has no prompts")
        study = study.model_copy(
            update={"prompts": study.prompts.model_copy(update={"from_file": prompts})}
        )
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate a study file.

    Raises:
        StudyError: The file is missing, not TOML, or invalid (the message names the field).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StudyError(f"cannot read the study file {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path} is not valid TOML: {exc}") from None
    if "from_file" in data.get("prompts", {}):
        raise StudyError(f"{path} is invalid:\n  prompts.from_file: not a study key (use file)")
    return parse_study(data, path.resolve().parent, str(path))
