"""The one error hierarchy of cupaas.

A :class:`UserError` is permanent: the input is wrong and the message says what to change. A
:class:`TransientError` may succeed when retried (a registry or git remote that did not answer).
Each surface (CLI, HTTP, deploy log) maps these to its own output in exactly one place.
Messages never contain secret values.
"""

from __future__ import annotations


class CupaasError(Exception):
    """Base of every error cupaas raises on purpose."""


class UserError(CupaasError):
    """Bad input: permanent until the user changes something; the message names the fix."""


class ValidationError(UserError):
    """A file (or a field in it) failed validation.

    Rendered as ``file: field: message`` so a person can jump straight to the problem.
    """

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


class ValidationErrors(UserError):
    """Several validation errors found in one pass, reported together."""

    def __init__(self, errors: list[ValidationError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class TransientError(CupaasError):
    """Something outside cupaas failed in a way that may pass on retry."""
