"""Params of the register stage: the MLflow model name and the promotion gate."""

from __future__ import annotations

from pydantic import Field, field_validator

from cxrdet.config.section import Section

NAME_FIELDS = {"format"}  # what `register.model_name` may refer to, e.g. cxrdet-{format}


class RegisterParams(Section):
    """Stage register: log the ensemble as an MLflow pyfunc model, register a version,
    alias it `challenger`, and move `champion` to it when it beats the champion."""

    # Registered model name; {format} is the detection data's format (rsna, vinbigdata, folder).
    model_name: str = Field("cxrdet-{format}", min_length=1)
    # `champion` moves only when the holdout metric gains at least this much (same holdout).
    min_delta: float = Field(0.01, ge=0.0)
    # Holdout images the logged model re-predicts before registering: must equal evaluate's.
    check_images: int = Field(2, ge=0)
    # Longest side of the PNG input example stored with the model (the holdout's first image).
    example_size: int = Field(256, ge=16)

    @field_validator("model_name")
    @classmethod
    def _known_fields(cls, name: str) -> str:
        try:
            name.format(**{field: "x" for field in NAME_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"{name!r}: only {{format}} may be filled in ({error!r})") from None
        return name

    def name_for(self, fmt: str) -> str:
        return self.model_name.format(format=fmt)
