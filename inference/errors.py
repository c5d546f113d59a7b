"""The error type every layer raises for problems a user can meet.

It lives in the lowest layer (inference) so that app/ and ui/ share one base
class. The message must be one a radiologist understands: what went wrong and,
where possible, what to do about it. Never a traceback.
"""


class XMedError(Exception):
    """A problem with a message fit for the reader's status bar or a dialog."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message
