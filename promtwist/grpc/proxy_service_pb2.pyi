from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union
from google.protobuf.empty_pb2 import Empty as Empty

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent_id", "launch_id", "agent_name", "host_name", "consolidated", "proxy_endpoints", "current_endpoint_index")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSOLIDATED_FIELD_NUMBER: _ClassVar[int]
    PROXY_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ENDPOINT_INDEX_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    launch_id: str
    agent_name: str
    host_name: str
    consolidated: bool
    proxy_endpoints: _containers.RepeatedScalarFieldContainer[str]
    current_endpoint_index: int
    def __init__(self, agent_id: _Optional[str] = ..., launch_id: _Optional[str] = ..., agent_name: _Optional[str] = ..., host_name: _Optional[str] = ..., consolidated: _Optional[bool] = ..., proxy_endpoints: _Optional[_Iterable[str]] = ..., current_endpoint_index: _Optional[int] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("valid", "reason", "agent_id")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    agent_id: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class RegisterPathRequest(_message.Message):
    __slots__ = ("agent_id", "path", "labels", "target_url", "path_source")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TARGET_URL_FIELD_NUMBER: _ClassVar[int]
    PATH_SOURCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    path: str
    labels: str
    target_url: str
    path_source: str
    def __init__(self, agent_id: _Optional[str] = ..., path: _Optional[str] = ..., labels: _Optional[str] = ..., target_url: _Optional[str] = ..., path_source: _Optional[str] = ...) -> None: ...

class RegisterPathResponse(_message.Message):
    __slots__ = ("valid", "reason", "path_count", "path_id")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PATH_COUNT_FIELD_NUMBER: _ClassVar[int]
    PATH_ID_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    path_count: int
    path_id: int
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ..., path_count: _Optional[int] = ..., path_id: _Optional[int] = ...) -> None: ...

class UnregisterPathRequest(_message.Message):
    __slots__ = ("agent_id", "path")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    path: str
    def __init__(self, agent_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class UnregisterPathResponse(_message.Message):
    __slots__ = ("valid", "reason")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class PathMapSizeRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class PathMapSizeResponse(_message.Message):
    __slots__ = ("path_count",)
    PATH_COUNT_FIELD_NUMBER: _ClassVar[int]
    path_count: int
    def __init__(self, path_count: _Optional[int] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ScrapeRequest(_message.Message):
    __slots__ = ("agent_id", "scrape_id", "path", "accept", "debug_enabled", "encodedQueryParams", "authHeader")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    DEBUG_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ENCODEDQUERYPARAMS_FIELD_NUMBER: _ClassVar[int]
    AUTHHEADER_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    scrape_id: int
    path: str
    accept: str
    debug_enabled: bool
    encodedQueryParams: str
    authHeader: str
    def __init__(self, agent_id: _Optional[str] = ..., scrape_id: _Optional[int] = ..., path: _Optional[str] = ..., accept: _Optional[str] = ..., debug_enabled: _Optional[bool] = ..., encodedQueryParams: _Optional[str] = ..., authHeader: _Optional[str] = ...) -> None: ...

class ScrapeResponse(_message.Message):
    __slots__ = ("valid_response", "agent_id", "scrape_id", "status_code", "failure_reason", "url", "content_type", "zipped", "content_as_text", "content_as_zipped")
    VALID_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ZIPPED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_AS_TEXT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_AS_ZIPPED_FIELD_NUMBER: _ClassVar[int]
    valid_response: bool
    agent_id: str
    scrape_id: int
    status_code: int
    failure_reason: str
    url: str
    content_type: str
    zipped: bool
    content_as_text: str
    content_as_zipped: bytes
    def __init__(self, valid_response: _Optional[bool] = ..., agent_id: _Optional[str] = ..., scrape_id: _Optional[int] = ..., status_code: _Optional[int] = ..., failure_reason: _Optional[str] = ..., url: _Optional[str] = ..., content_type: _Optional[str] = ..., zipped: _Optional[bool] = ..., content_as_text: _Optional[str] = ..., content_as_zipped: _Optional[bytes] = ...) -> None: ...

class ChunkedScrapeResponse(_message.Message):
    __slots__ = ("header", "chunk", "summary")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    header: HeaderData
    chunk: ChunkData
    summary: SummaryData
    def __init__(self, header: _Optional[_Union[HeaderData, _Mapping]] = ..., chunk: _Optional[_Union[ChunkData, _Mapping]] = ..., summary: _Optional[_Union[SummaryData, _Mapping]] = ...) -> None: ...

class HeaderData(_message.Message):
    __slots__ = ("header_valid_response", "header_agent_id", "header_scrape_id", "header_status_code", "header_failure_reason", "header_url", "header_content_type", "header_zipped")
    HEADER_VALID_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HEADER_AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    HEADER_FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    HEADER_URL_FIELD_NUMBER: _ClassVar[int]
    HEADER_CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    HEADER_ZIPPED_FIELD_NUMBER: _ClassVar[int]
    header_valid_response: bool
    header_agent_id: str
    header_scrape_id: int
    header_status_code: int
    header_failure_reason: str
    header_url: str
    header_content_type: str
    header_zipped: bool
    def __init__(self, header_valid_response: _Optional[bool] = ..., header_agent_id: _Optional[str] = ..., header_scrape_id: _Optional[int] = ..., header_status_code: _Optional[int] = ..., header_failure_reason: _Optional[str] = ..., header_url: _Optional[str] = ..., header_content_type: _Optional[str] = ..., header_zipped: _Optional[bool] = ...) -> None: ...

class ChunkData(_message.Message):
    __slots__ = ("chunk_scrape_id", "chunk_count", "chunk_byte_count", "chunk_checksum", "chunk_bytes")
    CHUNK_SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk_scrape_id: int
    chunk_count: int
    chunk_byte_count: int
    chunk_checksum: int
    chunk_bytes: bytes
    def __init__(self, chunk_scrape_id: _Optional[int] = ..., chunk_count: _Optional[int] = ..., chunk_byte_count: _Optional[int] = ..., chunk_checksum: _Optional[int] = ..., chunk_bytes: _Optional[bytes] = ...) -> None: ...

class SummaryData(_message.Message):
    __slots__ = ("summary_scrape_id", "summary_chunk_count", "summary_byte_count", "summary_checksum")
    SUMMARY_SCRAPE_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_BYTE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    summary_scrape_id: int
    summary_chunk_count: int
    summary_byte_count: int
    summary_checksum: int
    def __init__(self, summary_scrape_id: _Optional[int] = ..., summary_chunk_count: _Optional[int] = ..., summary_byte_count: _Optional[int] = ..., summary_checksum: _Optional[int] = ...) -> None: ...

class HeartBeatRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class HeartBeatResponse(_message.Message):
    __slots__ = ("valid", "reason")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
