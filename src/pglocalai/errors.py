"""One error hierarchy for the whole project.

Standard library only: PL/Python imports this module inside the server.

::

    PglocalaiError                      code                   SQLSTATE
    ├── InvalidArgument                 invalid_argument       22023   (a caller's value)
    │   ├── UnknownSetting              unknown_setting        22023
    │   └── InputTooLarge               input_too_large        54000
    ├── ProtocolError                   (the bytes on the socket; both sides)
    │   ├── BadRequest                  bad_request            08P01
    │   └── ProtocolMismatch            protocol_mismatch      08P01
    ├── ClientError                     (raised on the caller's side only)
    │   ├── RuntimeUnavailable          runtime_unavailable    08001
    │   └── InsufficientPrivilege       insufficient_privilege 42501
    ├── ServiceError                    (the runtime could not serve the request)
    │   ├── AuthenticationFailed        authentication_failed  28P01
    │   ├── RequestTimeout              timeout                57014
    │   ├── Overloaded                  overloaded             53000
    │   ├── InferenceFailed             inference_failed       XX000
    │   └── ShuttingDown                shutting_down          57P01
    └── ModelStoreError                 (model files)
        ├── ModelNotInstalled           model_not_installed    22023
        ├── ChecksumMismatch            checksum_mismatch      XX001
        └── ModelFormatError            model_format           XX001

Where each is raised: ``ServiceError`` leaves in the runtime, except that a
client raises ``RequestTimeout`` too when a runtime stops answering; ``ClientError``
leaves only in the client and the PL/Python layer. ``InvalidArgument`` means the
caller passed a value outside what is allowed (a setting, a batch size, a text over a
documented limit): PostgreSQL's class 22 (data exception), or 54000 for a limit.
``BadRequest`` means the bytes broke the protocol (a malformed frame or header, a
wrong field type): the SQL functions never send such a frame, so 08P01 (protocol
violation) reaches SQL only through a bug or a foreign client.

Every leaf has a stable ``code`` that crosses the socket (``to_wire`` /
``from_wire``), a SQLSTATE used by the PL/Python functions and an exit code
used by the CLI. Messages follow the PostgreSQL voice: lowercase, no trailing
period; ``detail`` says what was found, ``hint`` what to do.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: see "Loading" in pglocalai.pg.functions
if TYPE_CHECKING:
    from typing import Any


class PglocalaiError(Exception):
    """Base class: carries a user-actionable message, detail and hint."""

    code = "internal"
    sqlstate = "XX000"
    exit_code = 1

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form sent by the runtime to a client."""
        return {"code": self.code, "message": self.message, "detail": self.detail,
                "hint": self.hint}

    def __str__(self) -> str:
        return self.message


# -- a caller's value -------------------------------------------------------------


class InvalidArgument(PglocalaiError):
    """A value the caller passed is not allowed (raised by the client and the runtime)."""

    code = "invalid_argument"
    sqlstate = "22023"
    exit_code = 2


class UnknownSetting(InvalidArgument):
    code = "unknown_setting"


class InputTooLarge(InvalidArgument):
    """A request beyond a documented limit (texts per request, bytes, characters counted)."""

    code = "input_too_large"
    sqlstate = "54000"


# -- the wire ---------------------------------------------------------------------


class ProtocolError(PglocalaiError):
    """The bytes on the socket do not follow the protocol (either side may find it)."""

    sqlstate = "08P01"
    exit_code = 3


class BadRequest(ProtocolError):
    code = "bad_request"


class ProtocolMismatch(ProtocolError):
    code = "protocol_mismatch"


# -- the caller's side ------------------------------------------------------------


class ClientError(PglocalaiError):
    """Raised on the caller's side only: the runtime cannot be reached or trusted."""


class RuntimeUnavailable(ClientError):
    code = "runtime_unavailable"
    sqlstate = "08001"
    exit_code = 3


class InsufficientPrivilege(ClientError):
    """The caller may not do this, or may not trust the runtime it would talk to."""

    code = "insufficient_privilege"
    sqlstate = "42501"
    exit_code = 2


# -- the runtime's side -----------------------------------------------------------


class ServiceError(PglocalaiError):
    """The runtime could not serve the request."""


class AuthenticationFailed(ServiceError):
    """A TCP client sent no shared secret, or a wrong one."""

    code = "authentication_failed"
    sqlstate = "28P01"
    exit_code = 3


class RequestTimeout(ServiceError):
    code = "timeout"
    sqlstate = "57014"


class Overloaded(ServiceError):
    code = "overloaded"
    sqlstate = "53000"


class InferenceFailed(ServiceError):
    code = "inference_failed"
    sqlstate = "XX000"


class ShuttingDown(ServiceError):
    code = "shutting_down"
    sqlstate = "57P01"


# -- the model store --------------------------------------------------------------


class ModelStoreError(PglocalaiError):
    """A model is missing, corrupted or malformed in the model store."""

    exit_code = 4


class ModelNotInstalled(ModelStoreError):
    code = "model_not_installed"
    sqlstate = "22023"


class ChecksumMismatch(ModelStoreError):
    code = "checksum_mismatch"
    sqlstate = "XX001"


class ModelFormatError(ModelStoreError):
    code = "model_format"
    sqlstate = "XX001"


def _leaves(cls: type[PglocalaiError]) -> list[type[PglocalaiError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_leaves(sub))
    return out


BY_CODE: dict[str, type[PglocalaiError]] = {
    c.code: c for c in _leaves(PglocalaiError) if c.code != PglocalaiError.code
}


def from_wire(payload: dict[str, Any]) -> PglocalaiError:
    """Rebuild the typed error a runtime sent; unknown codes become the base class."""
    cls = BY_CODE.get(str(payload.get("code")), PglocalaiError)
    return cls(str(payload.get("message") or "runtime error"),
               detail=payload.get("detail"), hint=payload.get("hint"))
