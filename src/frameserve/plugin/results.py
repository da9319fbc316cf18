"""Result objects: structured answers a model returns beside its frames.

An object has a name and one or more records; a record maps field names to numbers, strings,
lists of those, or nested objects::

    ResultObject("faces", [{"score": 0.98, "box": [120, 40, 260, 210]}])
    python_script("nuke.message('Brightest pixel at 10, 20')")

Front doors translate them: the MLClient node receives ``FieldValuePairAttrib`` messages (and
runs a ``PythonScript`` object's script after a button press), HTTP clients receive JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from frameserve.errors import ModelRunError

__all__ = ["FieldValue", "Record", "ResultObject", "python_script"]

Scalar = bool | int | float | str
FieldValue = Union[Scalar, Sequence[Scalar], "ResultObject", Sequence["ResultObject"]]
Record = Mapping[str, FieldValue]

PYTHON_SCRIPT = "PythonScript"


@dataclass(frozen=True, init=False)
class ResultObject:
    """A named result with one or more records of named fields."""

    name: str
    records: tuple[Record, ...]

    def __init__(self, name: str, records: Record | Sequence[Record]) -> None:
        if isinstance(records, Mapping):
            records = [records]
        checked = tuple(_check_record(name, record) for record in records)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "records", checked)

    def to_data(self) -> dict[str, Any]:
        """Return the object as JSON-friendly data: ``{"name": ..., "records": [...]}``."""
        return {"name": self.name, "records": [_record_data(r) for r in self.records]}


def python_script(script: str) -> ResultObject:
    """Return an object the MLClient node runs as Python inside Nuke after a button press."""
    return ResultObject(PYTHON_SCRIPT, {"script": script})


def _check_record(owner: str, record: object) -> dict[str, FieldValue]:
    if not isinstance(record, Mapping):
        raise ModelRunError(f"result object {owner!r}: a record must be a mapping, got {record!r}")
    checked: dict[str, FieldValue] = {}
    for key, value in record.items():
        value = _plain(value)
        if not isinstance(key, str):
            raise ModelRunError(f"result object {owner!r}: field names must be strings: {key!r}")
        if not _allowed(value):
            raise ModelRunError(
                f"result object {owner!r}: field {key!r} holds {type(value).__name__}; allowed "
                "are bool, int, float, str, lists of one of those, and ResultObject"
            )
        checked[key] = tuple(value) if isinstance(value, list | tuple) else value
    return checked


def _plain(value: Any) -> Any:
    """Turn numpy scalars and arrays into Python numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [item.item() if isinstance(item, np.generic) else item for item in value]
    return value


def _allowed(value: object) -> bool:
    if isinstance(value, bool | int | float | str | ResultObject):
        return True
    if isinstance(value, list | tuple):
        kinds = {_kind(item) for item in value}
        return (len(kinds) <= 1 or kinds == {"int", "float"}) and None not in kinds
    return False


def _kind(item: object) -> str | None:
    if isinstance(item, bool | int):
        return "int"
    if isinstance(item, float):
        return "float"
    if isinstance(item, str):
        return "str"
    if isinstance(item, ResultObject):
        return "object"
    return None


def _record_data(record: Record) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, ResultObject):
            data[key] = value.to_data()
        elif isinstance(value, tuple):
            data[key] = [v.to_data() if isinstance(v, ResultObject) else v for v in value]
        else:
            data[key] = value
    return data
