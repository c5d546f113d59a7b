"""Errors the application core raises; all derive from :class:`XMedError`."""

from inference.errors import XMedError

__all__ = ["XMedError"]
