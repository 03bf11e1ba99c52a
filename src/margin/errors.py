"""The error tree. Everything margin raises on purpose is a ``MarginError``.

Edges translate it: the gateway into an OpenAI-shaped JSON error with ``status_code``;
the CLI into a one-line message and exit code 2 (``InputError``) or 1 (anything else).

    MarginError
    ├── InputError                 bad input from a person or a file (CLI exit 2)
    │   ├── ConfigError            margin.yaml / settings that do not validate
    │   └── TraceError             a trace file that cannot be read (file, line, expected)
    ├── RequestError               an HTTP request the gateway refuses (4xx)
    │   ├── BadRequest             400 invalid_request_error
    │   ├── AuthenticationError    401 missing or unknown API key
    │   ├── PermissionDenied       403 key not allowed this model / admin endpoint
    │   ├── NotFound               404 unknown route or model
    │   ├── PayloadTooLarge        413 body over the configured limit
    │   └── RateLimited            429 rate limit or budget, with Retry-After
    │       └── BudgetExceeded     429 a budget would be overrun
    ├── Overloaded                 503 a queue is full; retry later
    └── UpstreamError              the model behind us failed (502)
        ├── UpstreamTimeout        504
        └── UpstreamStatusError    the upstream answered with an error status
"""

from __future__ import annotations


class MarginError(Exception):
    """Base of every error margin raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers the edge should send with this error."""
        return {}


class InputError(MarginError):
    status_code = 400
    error_type = "invalid_request_error"


class ConfigError(InputError):
    pass


class TraceError(InputError):
    def __init__(self, path: str, line: int | None, expected: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {expected}")
        self.path = path
        self.line = line


class RequestError(MarginError):
    status_code = 400
    error_type = "invalid_request_error"


class BadRequest(RequestError):
    pass


class AuthenticationError(RequestError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(RequestError):
    status_code = 403
    error_type = "permission_error"


class NotFound(RequestError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(RequestError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(RequestError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float = 1.0,
        extra_headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.extra_headers = extra_headers or {}

    def headers(self) -> dict[str, str]:
        # Retry-After is whole seconds; never 0, or clients spin.
        return {"retry-after": str(max(1, int(self.retry_after_s + 0.999))), **self.extra_headers}


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"
    error_type = "insufficient_quota"


class Overloaded(MarginError):
    status_code = 503
    error_type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, int(self.retry_after_s + 0.999)))}


class UpstreamError(MarginError):
    status_code = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an HTTP error.

    A 4xx from the upstream is the client's fault and is passed through with its status;
    a 5xx becomes 502 so that clients can tell "our gateway" from "their model".
    """

    def __init__(self, message: str, *, upstream_status: int, error_type: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        if 400 <= upstream_status < 500:
            self.status_code = upstream_status
            self.error_type = error_type or "invalid_request_error"
        else:
            self.status_code = 502
            self.error_type = "upstream_error"

    @property
    def retryable(self) -> bool:
        return self.upstream_status >= 500 or self.upstream_status == 429


def error_body(exc: MarginError) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": exc.message, "type": exc.error_type, "code": exc.code,
                      "param": None}}
