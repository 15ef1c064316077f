"""The base of every params group."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

# pydantic's lax mode would read `seed: true` as 1 and `group_by_patient: "no"` as False, habits of
# YAML 1.1 that silently change a run; it stays lax elsewhere (PyYAML reads `5e-05` as a string).
STRICT: dict[Any, type] = {bool: bool, bool | None: bool, int: int, int | None: int}


class Section(BaseModel):
    """A params group: unknown keys are errors, values are validated on assignment too, and
    switches and counts strictly (STRICT)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_switches_and_counts(cls, value: Any, info: ValidationInfo) -> Any:
        expected = STRICT.get(cls.model_fields[info.field_name].annotation)
        if expected is bool and not isinstance(value, bool):
            raise ValueError("must be true or false")
        if expected is int and isinstance(value, bool):
            raise ValueError("must be a whole number, not true or false")
        return value


class Range(Section):
    """A search range [low, high]; subclasses narrow the fields' types and bounds."""

    low: Any
    high: Any

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self
