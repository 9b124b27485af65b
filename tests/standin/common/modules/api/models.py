# Mirrors modules/api/models.py ScriptArg / ScriptInfo (Forge main @ dfdcbab6; reForge @ 3b56b268): the
# pydantic models behind GET /sdapi/v1/script-info (create_script_ui fills them with setattr, unvalidated).
from typing import Any, Optional

from pydantic import BaseModel, Field


class ScriptArg(BaseModel):
    label: str | None = Field(default=None, title="Label")
    value: Optional[Any] = Field(default=None, title="Value")
    minimum: Optional[Any] = Field(default=None, title="Minimum")
    maximum: Optional[Any] = Field(default=None, title="Maximum")
    step: Optional[Any] = Field(default=None, title="Step")
    choices: Optional[list[str]] = Field(default=None, title="Choices")


class ScriptInfo(BaseModel):
    name: str | None = Field(default=None, title="Name")
    is_alwayson: bool | None = Field(default=None, title="IsAlwayson")
    is_img2img: bool | None = Field(default=None, title="IsImg2img")
    args: list[ScriptArg] = Field(title="Arguments")
