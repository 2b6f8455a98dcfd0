from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("index", "term", "type", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    type: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., type: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ConfState(_message.Message):
    __slots__ = ("voters", "learners")
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    LEARNERS_FIELD_NUMBER: _ClassVar[int]
    voters: _containers.RepeatedScalarFieldContainer[str]
    learners: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, voters: _Optional[_Iterable[str]] = ..., learners: _Optional[_Iterable[str]] = ...) -> None: ...

class SnapshotMeta(_message.Message):
    __slots__ = ("index", "term", "conf")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    CONF_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    conf: ConfState
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., conf: _Optional[_Union[ConfState, _Mapping]] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("type", "to", "term", "log_term", "index", "entries", "commit", "reject", "reject_hint", "context", "snapshot", "has_snapshot")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REJECT_HINT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HAS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    type: int
    to: str
    term: int
    log_term: int
    index: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    commit: int
    reject: bool
    reject_hint: int
    context: bytes
    snapshot: SnapshotMeta
    has_snapshot: bool
    def __init__(self, type: _Optional[int] = ..., to: _Optional[str] = ..., term: _Optional[int] = ..., log_term: _Optional[int] = ..., index: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., commit: _Optional[int] = ..., reject: _Optional[bool] = ..., reject_hint: _Optional[int] = ..., context: _Optional[bytes] = ..., snapshot: _Optional[_Union[SnapshotMeta, _Mapping]] = ..., has_snapshot: _Optional[bool] = ..., **kwargs) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("cluster_id", "messages")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    messages: _containers.RepeatedCompositeFieldContainer[RaftMessage]
    def __init__(self, cluster_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[RaftMessage, _Mapping]]] = ...) -> None: ...

class RaftAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VoteRequest(_message.Message):
    __slots__ = ("cluster_id", "pre_vote", "message")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    pre_vote: bool
    message: RaftMessage
    def __init__(self, cluster_id: _Optional[str] = ..., pre_vote: _Optional[bool] = ..., message: _Optional[_Union[RaftMessage, _Mapping]] = ...) -> None: ...

class TimeoutNowRequest(_message.Message):
    __slots__ = ("cluster_id", "message")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    message: RaftMessage
    def __init__(self, cluster_id: _Optional[str] = ..., message: _Optional[_Union[RaftMessage, _Mapping]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("cluster_id", "term", "meta", "offset", "data", "last", "checksum", "data_index", "snapshot_id", "query")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DATA_INDEX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    term: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    last: bool
    checksum: bytes
    data_index: int
    snapshot_id: int
    query: bool
    def __init__(self, cluster_id: _Optional[str] = ..., term: _Optional[int] = ..., meta: _Optional[_Union[SnapshotMeta, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., checksum: _Optional[bytes] = ..., data_index: _Optional[int] = ..., snapshot_id: _Optional[int] = ..., query: _Optional[bool] = ..., **kwargs) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("ok", "received", "error", "resume_offset")
    OK_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    received: int
    error: str
    resume_offset: int
    def __init__(self, ok: _Optional[bool] = ..., received: _Optional[int] = ..., error: _Optional[str] = ..., resume_offset: _Optional[int] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("cluster_id", "commands")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    commands: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, cluster_id: _Optional[str] = ..., commands: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ProposeResult(_message.Message):
    __slots__ = ("status", "result", "index", "error")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        APPLIED: _ClassVar[ProposeResult.Status]
        NOT_APPLIED: _ClassVar[ProposeResult.Status]
        UNKNOWN: _ClassVar[ProposeResult.Status]
    APPLIED: ProposeResult.Status
    NOT_APPLIED: ProposeResult.Status
    UNKNOWN: ProposeResult.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    status: ProposeResult.Status
    result: bytes
    index: int
    error: str
    def __init__(self, status: _Optional[_Union[ProposeResult.Status, str]] = ..., result: _Optional[bytes] = ..., index: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProposeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ProposeResult, _Mapping]]] = ...) -> None: ...
