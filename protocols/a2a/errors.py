"""A2A errors: one class per protocol error, each knowing its JSON-RPC code, gRPC status and reason.

The table is §5.4 of A2A 1.0.1 (the current text): the HTTP status follows from the gRPC status
by google.rpc.Code's own mapping (``HTTP_STATUS``), which is how 1.0.1 corrected 1.0.0's table
(1.0.0 said 409 for TaskNotCancelable, 415 for ContentTypeNotSupported, 502 for
InvalidAgentResponse and UNIMPLEMENTED for three errors; spec commit 757f0ec "recent
transcoding-related error changes", issue a2aproject/A2A#1596).

Rendering (A2A 1.0 §5.4, §9.5, §11.6):

* JSON-RPC 1.0: ``{"code", "message", "data": [google.rpc.ErrorInfo]}``; JSON-RPC 0.3: ``{"code", "message"}``.
* HTTP+JSON: ``google.rpc.Status`` ``{"error": {"code": <http>, "status", "message", "details": [ErrorInfo]}}``;
  the 0.3 REST face adds the top-level ``type`` (the error's class name) that 0.3 clients map back.

``CallerRefusedError`` is one failure A2A leaves to the transport (§7.4: HTTP 401 / gRPC
UNAUTHENTICATED, 403 / PERMISSION_DENIED): it is answered with that HTTP status on both bindings,
as ``google.rpc.Status`` on HTTP+JSON and, since A2A defines no JSON-RPC code for it, with
JSON-RPC's generic server error -32000 on JSON-RPC; neither carries an A2A ``ErrorInfo`` reason.
``RateLimitedError`` (a caller past one of its quotas) is the other, answered the same way: HTTP
429 (gRPC RESOURCE_EXHAUSTED) with ``Retry-After``, and a ``google.rpc.RetryInfo`` detail (the
``data`` of the JSON-RPC 1.0 error).
"""

from __future__ import annotations

from typing import Any

ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
A2A_DOMAIN = "a2a-protocol.org"

# google.rpc.Code -> HTTP status (googleapis google/rpc/code.proto), for the statuses used here.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
}


class A2AError(Exception):
    code = -32603
    status = "INTERNAL"
    reason = "INTERNAL_ERROR"
    default = "Internal error"

    def __init__(self, message: str | None = None, **metadata: str) -> None:
        self.message = message or self.default
        self.metadata = {k: str(v) for k, v in metadata.items()}
        super().__init__(self.message)

    @property
    def http(self) -> int:
        return HTTP_STATUS[self.status]

    @property
    def type_name(self) -> str:
        return type(self).__name__

    def jsonrpc(self, version: str) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if version != "0.3":
            err["data"] = [self.error_info()]
        return err

    def error_info(self) -> dict[str, Any]:
        return {"@type": ERROR_INFO_TYPE, "reason": self.reason, "domain": A2A_DOMAIN, "metadata": self.metadata}

    def rest(self, version: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "error": {"code": self.http, "status": self.status, "message": self.message, "details": [self.error_info()]}
        }
        if version == "0.3":
            body["type"] = self.type_name
            body["message"] = self.message
        return body


class TaskNotFoundError(A2AError):
    code, status, reason, default = -32001, "NOT_FOUND", "TASK_NOT_FOUND", "Task not found"


class TaskNotCancelableError(A2AError):
    code, status, reason, default = -32002, "FAILED_PRECONDITION", "TASK_NOT_CANCELABLE", "Task cannot be canceled"


class PushNotificationNotSupportedError(A2AError):
    code, status, reason = -32003, "FAILED_PRECONDITION", "PUSH_NOTIFICATION_NOT_SUPPORTED"
    default = "Push notifications are not supported"


class UnsupportedOperationError(A2AError):
    code, status, reason = -32004, "FAILED_PRECONDITION", "UNSUPPORTED_OPERATION"
    default = "This operation is not supported"


class ContentTypeNotSupportedError(A2AError):
    code, status, reason = -32005, "INVALID_ARGUMENT", "CONTENT_TYPE_NOT_SUPPORTED"
    default = "Incompatible content types"


class InvalidAgentResponseError(A2AError):
    code, status, reason, default = -32006, "INTERNAL", "INVALID_AGENT_RESPONSE", "Invalid agent response"


class ExtendedAgentCardNotConfiguredError(A2AError):
    code, status, reason = -32007, "FAILED_PRECONDITION", "EXTENDED_AGENT_CARD_NOT_CONFIGURED"
    default = "Extended agent card is not configured"

    @property
    def type_name(self) -> str:  # the 0.3 name
        return "AuthenticatedExtendedCardNotConfiguredError"


class ExtensionSupportRequiredError(A2AError):
    code, status, reason = -32008, "FAILED_PRECONDITION", "EXTENSION_SUPPORT_REQUIRED"
    default = "A required extension is not supported by the client"


class VersionNotSupportedError(A2AError):
    code, status, reason, default = -32009, "FAILED_PRECONDITION", "VERSION_NOT_SUPPORTED", "Version not supported"


class InvalidParamsError(A2AError):
    code, status, reason, default = -32602, "INVALID_ARGUMENT", "INVALID_PARAMS", "Invalid parameters"


class InvalidRequestError(A2AError):
    code, status, reason, default = -32600, "INVALID_ARGUMENT", "INVALID_REQUEST", "Invalid request"


class MethodNotFoundError(A2AError):
    code, status, reason, default = -32601, "NOT_FOUND", "METHOD_NOT_FOUND", "Method not found"


class JSONParseError(A2AError):
    code, status, reason, default = -32700, "INVALID_ARGUMENT", "INVALID_REQUEST", "Invalid JSON payload"


class InternalError(A2AError):
    pass


class CallerRefusedError(A2AError):
    """No or bad credentials (401), not allowed (403), or the issuer is unreachable (503); see above."""

    code = -32000
    _STATUS = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 503: "UNAVAILABLE"}

    def __init__(self, http_status: int = 401, message: str = "authentication required") -> None:
        super().__init__(message)
        self._http = http_status if http_status in self._STATUS else 401
        self.status = self.reason = self._STATUS[self._http]

    @property
    def http(self) -> int:
        return self._http

    def jsonrpc(self, version: str) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def rest(self, version: str) -> dict[str, Any]:
        return {"error": {"code": self.http, "status": self.status, "message": self.message}}


class RateLimitedError(A2AError):
    """A caller past one of its quotas (``gateway.core.quotas``); see the module docstring."""

    code, status, http = -32000, "RESOURCE_EXHAUSTED", 429  # type: ignore[assignment]

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def retry_info(self) -> dict[str, Any]:
        return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_after}s"}

    def jsonrpc(self, version: str) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if version != "0.3":
            err["data"] = [self.retry_info()]
        return err

    def rest(self, version: str) -> dict[str, Any]:
        details = [self.retry_info()]
        return {"error": {"code": self.http, "status": self.status, "message": self.message, "details": details}}


class RemoteAgentError(Exception):
    """An outbound call to a remote A2A agent failed (raised by the client, never sent to a peer).
    The message is for the client; ``detail`` (what exactly happened) is for the log."""

    def __init__(
        self, message: str, *, code: int | None = None, retryable: bool = False, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.retryable, self.detail = code, retryable, detail or message


BY_CODE: dict[int, type[A2AError]] = {
    cls.code: cls
    for cls in (
        TaskNotFoundError,
        TaskNotCancelableError,
        PushNotificationNotSupportedError,
        UnsupportedOperationError,
        ContentTypeNotSupportedError,
        InvalidAgentResponseError,
        ExtendedAgentCardNotConfiguredError,
        ExtensionSupportRequiredError,
        VersionNotSupportedError,
        InvalidParamsError,
        InvalidRequestError,
        MethodNotFoundError,
        JSONParseError,
        InternalError,
    )
}
