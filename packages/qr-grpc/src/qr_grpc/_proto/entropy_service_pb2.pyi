from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EntropyRequest(_message.Message):
    __slots__ = ("bytes_needed", "sequence_id", "rows")
    BYTES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    bytes_needed: int
    sequence_id: int
    rows: int
    def __init__(self, bytes_needed: _Optional[int] = ..., sequence_id: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class EntropyResponse(_message.Message):
    __slots__ = ("data", "sequence_id", "generation_timestamp_ns", "device_id")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sequence_id: int
    generation_timestamp_ns: int
    device_id: str
    def __init__(self, data: _Optional[bytes] = ..., sequence_id: _Optional[int] = ..., generation_timestamp_ns: _Optional[int] = ..., device_id: _Optional[str] = ...) -> None: ...
