"""Every error bentoedge raises on purpose, in one hierarchy.

The command line maps each class to an exit code (``exit_code``: 1 when a verification
or quality gate failed, 2 for bad usage or input), and the HTTP APIs map request errors
to a status code (``status``).  Messages say what went wrong and what to do about it, in
one line, because they are what a user reads.

    BentoEdgeError
    ├── UsageError (2)                 bad input from the user: files, flags, names
    │   ├── SourceError                model file missing, corrupt or unsupported
    │   ├── DataError                  calibration/validation .npz missing or mismatched
    │   ├── ConversionError            a target cannot be produced (names what to install)
    │   ├── KeyMissingError            a key file or recipient is missing or unknown
    │   ├── NotFoundError              no such model, version or channel target
    │   ├── ConfigError                agent config or URL is wrong
    │   └── DeployError                a cloud deployment cannot be made as asked
    ├── VerificationError (1)          something is not what was signed
    │   ├── SignatureError             bad, missing or untrusted signature
    │   ├── IntegrityError             hash, size or authenticated-decryption failure
    │   ├── FormatError                manifest or file layout not bentoedge.sealed/1
    │   └── DecryptionError            no recipient we hold can unwrap the data key
    ├── QualityGateError (1)           a quantized artifact is over its error budget
    ├── HealthCheckError (1)           a model failed its golden samples
    ├── ChannelError (1)               the update channel refused or failed an update
    ├── RequestError (4xx)             a prediction request is malformed
    └── UnavailableError (503)         neither the device nor the cloud can answer
"""

from __future__ import annotations


class BentoEdgeError(Exception):
    """Base class: a failure bentoedge understands and can explain."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(BentoEdgeError):
    exit_code = 2


class SourceError(UsageError):
    pass


class DataError(UsageError):
    pass


class ConversionError(UsageError):
    pass


class KeyMissingError(UsageError):
    pass


class NotFoundError(UsageError):
    pass


class ConfigError(UsageError):
    pass


class DeployError(UsageError):
    pass


class VerificationError(BentoEdgeError):
    exit_code = 1


class SignatureError(VerificationError):
    pass


class IntegrityError(VerificationError):
    pass


class FormatError(VerificationError):
    pass


class DecryptionError(VerificationError):
    pass


class QualityGateError(BentoEdgeError):
    exit_code = 1

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class HealthCheckError(BentoEdgeError):
    exit_code = 1


class ChannelError(BentoEdgeError):
    exit_code = 1


class RequestError(BentoEdgeError):
    """A prediction request the server refuses without touching the model."""

    exit_code = 2

    def __init__(self, message: str, input_name: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.input_name = input_name
        self.status = status

    def to_body(self) -> dict[str, str]:
        body = {"error": self.message}
        if self.input_name is not None:
            body["input"] = self.input_name
        return body


class UnavailableError(BentoEdgeError):
    """Neither edge nor cloud could answer; maps to HTTP 503 with the reason."""

    exit_code = 1
    status = 503

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def to_body(self) -> dict[str, str]:
        return {"error": self.message, "reason": self.reason}
