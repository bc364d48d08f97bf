"""OpenAI's error body: every refused request gets one, with a 4xx (or 5xx) status.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

__all__ = ["APIError", "error_body"]


class APIError(Exception):
    """A request the server refuses: status (HTTP), message (names the field and the value),
    type (OpenAI's error type), param (the offending field or None), code (a short tag or None)."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self):
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message, type="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
