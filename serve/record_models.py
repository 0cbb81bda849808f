"""Wire models built from the registry's records (frozen dataclasses): a record's fields are
typed once, in the record, and read from it by attribute.

`record_model(Record, "a b=c d=e.f")` is the base of a wire model whose fields are the
ones named, in that order: `a` shows the record's attribute `a`; `b=c` shows attribute `c`
as `b`; `d=e.f` reaches into a nested value (a property serves as well as a field). Each
field has the type the record gives that attribute, unless one is passed by the field's
name (an `Annotated` type carries a description). `XPublic.model_validate(record)` then
reads a record; an attribute the model does not name never reaches the wire.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import AliasPath, BaseModel, ConfigDict, Field, create_model


class FromRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def record_model(record: type, fields: str, **types: Any) -> Any:
    """A model class to derive the wire model from (typed Any: a base made at run time is
    opaque to the type checker)."""
    definitions: dict[str, Any] = {}
    for entry in fields.split():
        name, _, path = entry.partition("=")
        attributes = (path or name).split(".")
        annotation = types[name] if name in types else _wire_type(_type_at(record, attributes))
        alias = AliasPath(*attributes) if len(attributes) > 1 else path or None
        definitions[name] = (annotation, Field(validation_alias=alias))
    unknown = set(types) - set(definitions)
    if unknown:
        raise TypeError(f"types given for fields not named: {', '.join(sorted(unknown))}")
    return create_model(f"{record.__name__}Fields", __base__=FromRecord, **definitions)


def _type_at(owner: Any, attributes: list[str]) -> Any:
    """The type of owner.a.b...: a dataclass's or model's field, or a property's return."""
    for attribute in attributes:
        member = inspect.getattr_static(owner, attribute, None)
        if isinstance(member, property):
            owner = get_type_hints(member.fget)["return"]
        elif dataclasses.is_dataclass(owner) or issubclass(owner, BaseModel):
            owner = get_type_hints(owner)[attribute]
        else:
            raise TypeError(f"{owner.__name__} has no field or property {attribute}")
    return owner


def _wire_type(annotation: Any) -> Any:
    """The record's type as the wire documents it: a status or kind (a Literal) as plain
    text, so that a value the registry adds reaches clients without a schema change, and
    an untyped dict as a JSON object."""
    origin = get_origin(annotation)
    if origin is Literal:
        return str
    if annotation is dict:
        return dict[str, Any]
    if origin in (Union, UnionType):
        return Union[tuple(_wire_type(arg) for arg in get_args(annotation))]  # noqa: UP007
    return annotation
