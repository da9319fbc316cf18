"""The MLClient protobuf schema (package ``mlserver``, proto2), built at import time.

The field numbers and types below are the wire contract of Foundry's MLClient node
(``docs/mlclient-protocol.md``). Building the descriptors in Python keeps the schema in
one readable table and needs no ``protoc`` step. Every scalar field is ``optional``; the
repeated bool/int/float option values are declared packed, and parsers accept both encodings.

Usage::

    from frameserve.serve.mlclient import messages as pb
    wrapper = pb.RequestWrapper(info=True, r1=pb.RequestInfo(info=True))
    data = wrapper.SerializeToString()
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "BoolAttrib",
    "Error",
    "FieldValuePair",
    "FieldValuePairAttrib",
    "FloatAttrib",
    "Image",
    "ImagePrototype",
    "IntAttrib",
    "Model",
    "MultipleChoiceOption",
    "RequestInference",
    "RequestInfo",
    "RequestWrapper",
    "RespondInference",
    "RespondInfo",
    "RespondWrapper",
    "StringAttrib",
]

_PACKAGE = "mlserver"

_F = descriptor_pb2.FieldDescriptorProto
_BOOL, _INT32, _FLOAT, _STRING, _BYTES = (
    _F.TYPE_BOOL,
    _F.TYPE_INT32,
    _F.TYPE_FLOAT,
    _F.TYPE_STRING,
    _F.TYPE_BYTES,
)

# message name -> [(field name, number, scalar type or message name, repeated, packed)]
_Field = tuple[str, int, "int | str", bool, bool]
_SCHEMA: dict[str, list[_Field]] = {
    "RequestWrapper": [
        ("info", 1, _BOOL, False, False),
        ("r1", 2, "RequestInfo", False, False),
        ("r2", 3, "RequestInference", False, False),
    ],
    "RespondWrapper": [
        ("info", 1, _BOOL, False, False),
        ("r1", 2, "RespondInfo", False, False),
        ("r2", 3, "RespondInference", False, False),
        ("error", 4, "Error", False, False),
    ],
    "RequestInfo": [("info", 1, _BOOL, False, False)],
    "RespondInfo": [
        ("num_models", 1, _INT32, False, False),
        ("models", 2, "Model", True, False),
    ],
    "Model": [
        ("name", 1, _STRING, False, False),
        ("label", 2, _STRING, False, False),
        ("inputs", 3, "ImagePrototype", True, False),
        ("outputs", 4, "ImagePrototype", True, False),
        ("bool_options", 5, "BoolAttrib", True, False),
        ("int_options", 6, "IntAttrib", True, False),
        ("float_options", 7, "FloatAttrib", True, False),
        ("string_options", 8, "StringAttrib", True, False),
        ("button_options", 9, "BoolAttrib", True, False),
        ("mc_options", 10, "MultipleChoiceOption", True, False),
    ],
    "MultipleChoiceOption": [
        ("name", 1, _STRING, False, False),
        ("value", 2, _STRING, False, False),
        ("choices", 3, _STRING, True, False),
    ],
    "ImagePrototype": [
        ("name", 1, _STRING, False, False),
        ("channels", 2, _INT32, False, False),
    ],
    "Error": [("msg", 1, _STRING, False, False)],
    "RequestInference": [
        ("model", 1, "Model", False, False),
        ("images", 2, "Image", True, False),
    ],
    "RespondInference": [
        ("num_images", 1, _INT32, False, False),
        ("images", 2, "Image", True, False),
        ("num_objects", 3, _INT32, False, False),
        ("objects", 4, "FieldValuePairAttrib", True, False),
    ],
    "Image": [
        ("width", 1, _INT32, False, False),
        ("height", 2, _INT32, False, False),
        ("channels", 3, _INT32, False, False),
        ("image", 4, _BYTES, False, False),
    ],
    "BoolAttrib": [("name", 1, _STRING, False, False), ("values", 2, _BOOL, True, True)],
    "IntAttrib": [("name", 1, _STRING, False, False), ("values", 2, _INT32, True, True)],
    "FloatAttrib": [("name", 1, _STRING, False, False), ("values", 2, _FLOAT, True, True)],
    "StringAttrib": [("name", 1, _STRING, False, False), ("values", 2, _STRING, True, False)],
    "FieldValuePairAttrib": [
        ("name", 1, _STRING, False, False),
        ("values", 2, "FieldValuePair", True, False),
    ],
    "FieldValuePair": [
        ("int_attributes", 1, "IntAttrib", True, False),
        ("float_attributes", 2, "FloatAttrib", True, False),
        ("string_attributes", 3, "StringAttrib", True, False),
        ("children", 4, "FieldValuePairAttrib", True, False),
    ],
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Return the ``mlserver.proto`` file descriptor described by ``_SCHEMA``."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="frameserve/mlserver.proto", package=_PACKAGE, syntax="proto2"
    )
    for message_name, fields in _SCHEMA.items():
        message = proto.message_type.add(name=message_name)
        for field_name, number, kind, repeated, packed in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if isinstance(kind, str):
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{kind}"
            else:
                field.type = kind
            if packed:
                field.options.packed = True
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


RequestWrapper: Any = _message_class("RequestWrapper")
RespondWrapper: Any = _message_class("RespondWrapper")
RequestInfo: Any = _message_class("RequestInfo")
RespondInfo: Any = _message_class("RespondInfo")
Model: Any = _message_class("Model")
MultipleChoiceOption: Any = _message_class("MultipleChoiceOption")
ImagePrototype: Any = _message_class("ImagePrototype")
Error: Any = _message_class("Error")
RequestInference: Any = _message_class("RequestInference")
RespondInference: Any = _message_class("RespondInference")
Image: Any = _message_class("Image")
BoolAttrib: Any = _message_class("BoolAttrib")
IntAttrib: Any = _message_class("IntAttrib")
FloatAttrib: Any = _message_class("FloatAttrib")
StringAttrib: Any = _message_class("StringAttrib")
FieldValuePairAttrib: Any = _message_class("FieldValuePairAttrib")
FieldValuePair: Any = _message_class("FieldValuePair")
