"""JSON bodies of the HTTP door (Open Inference Protocol REST), validated with pydantic on arrival."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from gateway.errors import invalid


class InputBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] = {}
    data: Any = None


class OutputBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    parameters: dict[str, Any] = {}


class InferBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: StrictStr = ""
    parameters: dict[str, Any] = {}
    inputs: list[InputBody]
    outputs: list[OutputBody] = []


class IndexBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    repository_name: str = ""
    ready: bool = False


def parse_json(model: type[BaseModel], raw: bytes | memoryview) -> Any:
    """Parses and validates a body; any fault becomes a 400 that names the field."""
    try:
        return model.model_validate_json(bytes(raw) if isinstance(raw, memoryview) else raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            raise invalid(f"request body is not valid JSON: {first['msg']}") from None
        raise invalid(f"request body field '{where}': {first['msg']}") from None


def binary_size(name: str, parameters: dict[str, Any]) -> int | None:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid(f"input '{name}': parameters.binary_data_size must be a non-negative integer")
    return size
