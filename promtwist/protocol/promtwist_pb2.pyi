from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PathRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[PathRole]
    HOLDER: _ClassVar[PathRole]
    STANDBY: _ClassVar[PathRole]
    RELEASED: _ClassVar[PathRole]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUCCESS: _ClassVar[Outcome]
    PATH_NOT_FOUND: _ClassVar[Outcome]
    UNREACHABLE: _ClassVar[Outcome]
    TIMED_OUT: _ClassVar[Outcome]
    TOO_LARGE: _ClassVar[Outcome]
    CANCELLED: _ClassVar[Outcome]
    AGENT_ERROR: _ClassVar[Outcome]
    DISCONNECTED: _ClassVar[Outcome]
ROLE_UNSPECIFIED: PathRole
HOLDER: PathRole
STANDBY: PathRole
RELEASED: PathRole
SUCCESS: Outcome
PATH_NOT_FOUND: Outcome
UNREACHABLE: Outcome
TIMED_OUT: Outcome
TOO_LARGE: Outcome
CANCELLED: Outcome
AGENT_ERROR: Outcome
DISCONNECTED: Outcome

class Hello(_message.Message):
    __slots__ = ("protocol_version", "agent_name", "host_name", "launch_id", "token", "consolidated", "labels", "software_version", "max_frame_bytes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_NAME_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONSOLIDATED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    agent_name: str
    host_name: str
    launch_id: str
    token: str
    consolidated: bool
    labels: _containers.ScalarMap[str, str]
    software_version: str
    max_frame_bytes: int
    def __init__(self, protocol_version: _Optional[int] = ..., agent_name: _Optional[str] = ..., host_name: _Optional[str] = ..., launch_id: _Optional[str] = ..., token: _Optional[str] = ..., consolidated: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., software_version: _Optional[str] = ..., max_frame_bytes: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("agent_id", "heartbeat_period_ms", "max_frame_bytes", "protocol_version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_period_ms: int
    max_frame_bytes: int
    protocol_version: int
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_period_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("reason", "message")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNSPECIFIED: _ClassVar[Reject.Reason]
        PROTOCOL_VERSION: _ClassVar[Reject.Reason]
        UNAUTHENTICATED: _ClassVar[Reject.Reason]
        BAD_REQUEST: _ClassVar[Reject.Reason]
        OVERLOADED: _ClassVar[Reject.Reason]
    UNSPECIFIED: Reject.Reason
    PROTOCOL_VERSION: Reject.Reason
    UNAUTHENTICATED: Reject.Reason
    BAD_REQUEST: Reject.Reason
    OVERLOADED: Reject.Reason
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: Reject.Reason
    message: str
    def __init__(self, reason: _Optional[_Union[Reject.Reason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class RegisterPath(_message.Message):
    __slots__ = ("request_id", "path", "name", "labels", "target_url")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TARGET_URL_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    path: str
    name: str
    labels: _containers.ScalarMap[str, str]
    target_url: str
    def __init__(self, request_id: _Optional[int] = ..., path: _Optional[str] = ..., name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., target_url: _Optional[str] = ...) -> None: ...

class UnregisterPath(_message.Message):
    __slots__ = ("request_id", "path")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    path: str
    def __init__(self, request_id: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class Holder(_message.Message):
    __slots__ = ("agent_name", "host_name", "since_ms", "agent_id")
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_NAME_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_name: str
    host_name: str
    since_ms: int
    agent_id: str
    def __init__(self, agent_name: _Optional[str] = ..., host_name: _Optional[str] = ..., since_ms: _Optional[int] = ..., agent_id: _Optional[str] = ...) -> None: ...

class PathReply(_message.Message):
    __slots__ = ("request_id", "ok", "reason", "role", "holder", "position", "refusal")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ok: bool
    reason: str
    role: PathRole
    holder: Holder
    position: int
    refusal: str
    def __init__(self, request_id: _Optional[int] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., role: _Optional[_Union[PathRole, str]] = ..., holder: _Optional[_Union[Holder, _Mapping]] = ..., position: _Optional[int] = ..., refusal: _Optional[str] = ...) -> None: ...

class PathStatus(_message.Message):
    __slots__ = ("path", "role", "reason", "holder", "position")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    path: str
    role: PathRole
    reason: str
    holder: Holder
    position: int
    def __init__(self, path: _Optional[str] = ..., role: _Optional[_Union[PathRole, str]] = ..., reason: _Optional[str] = ..., holder: _Optional[_Union[Holder, _Mapping]] = ..., position: _Optional[int] = ...) -> None: ...

class ScrapeRequest(_message.Message):
    __slots__ = ("scrape_id", "path", "query", "accept", "accept_encoding", "authorization", "timeout_ms", "window_bytes", "target", "scheme")
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_BYTES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    scrape_id: int
    path: str
    query: str
    accept: str
    accept_encoding: str
    authorization: str
    timeout_ms: int
    window_bytes: int
    target: str
    scheme: str
    def __init__(self, scrape_id: _Optional[int] = ..., path: _Optional[str] = ..., query: _Optional[str] = ..., accept: _Optional[str] = ..., accept_encoding: _Optional[str] = ..., authorization: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., window_bytes: _Optional[int] = ..., target: _Optional[str] = ..., scheme: _Optional[str] = ...) -> None: ...

class ScrapeResponse(_message.Message):
    __slots__ = ("scrape_id", "outcome", "status", "content_type", "content_encoding", "content_length", "reason", "body", "last")
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    scrape_id: int
    outcome: Outcome
    status: int
    content_type: str
    content_encoding: str
    content_length: int
    reason: str
    body: bytes
    last: bool
    def __init__(self, scrape_id: _Optional[int] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., status: _Optional[int] = ..., content_type: _Optional[str] = ..., content_encoding: _Optional[str] = ..., content_length: _Optional[int] = ..., reason: _Optional[str] = ..., body: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class ScrapeChunk(_message.Message):
    __slots__ = ("scrape_id", "data", "last", "outcome", "reason")
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scrape_id: int
    data: bytes
    last: bool
    outcome: Outcome
    reason: str
    def __init__(self, scrape_id: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ScrapeCredit(_message.Message):
    __slots__ = ("scrape_id", "bytes")
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    scrape_id: int
    bytes: int
    def __init__(self, scrape_id: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class CancelScrape(_message.Message):
    __slots__ = ("scrape_id",)
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    scrape_id: int
    def __init__(self, scrape_id: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce", "round_trip_micros")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ROUND_TRIP_MICROS_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    round_trip_micros: int
    def __init__(self, nonce: _Optional[int] = ..., round_trip_micros: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("hello", "welcome", "reject", "register_path", "unregister_path", "path_reply", "scrape_request", "scrape_response", "scrape_chunk", "scrape_credit", "cancel_scrape", "ping", "pong", "goodbye", "path_status")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    REGISTER_PATH_FIELD_NUMBER: _ClassVar[int]
    UNREGISTER_PATH_FIELD_NUMBER: _ClassVar[int]
    PATH_REPLY_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_CREDIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_SCRAPE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    PATH_STATUS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    welcome: Welcome
    reject: Reject
    register_path: RegisterPath
    unregister_path: UnregisterPath
    path_reply: PathReply
    scrape_request: ScrapeRequest
    scrape_response: ScrapeResponse
    scrape_chunk: ScrapeChunk
    scrape_credit: ScrapeCredit
    cancel_scrape: CancelScrape
    ping: Ping
    pong: Pong
    goodbye: Goodbye
    path_status: PathStatus
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., register_path: _Optional[_Union[RegisterPath, _Mapping]] = ..., unregister_path: _Optional[_Union[UnregisterPath, _Mapping]] = ..., path_reply: _Optional[_Union[PathReply, _Mapping]] = ..., scrape_request: _Optional[_Union[ScrapeRequest, _Mapping]] = ..., scrape_response: _Optional[_Union[ScrapeResponse, _Mapping]] = ..., scrape_chunk: _Optional[_Union[ScrapeChunk, _Mapping]] = ..., scrape_credit: _Optional[_Union[ScrapeCredit, _Mapping]] = ..., cancel_scrape: _Optional[_Union[CancelScrape, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., path_status: _Optional[_Union[PathStatus, _Mapping]] = ...) -> None: ...
