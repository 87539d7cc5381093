"""``/v1/models`` response models."""

from typing import Literal

from pydantic import BaseModel

__all__ = ["ModelCard", "ModelList"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sinkwatch"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
