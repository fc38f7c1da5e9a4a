"""The error tree of edgeslm.

Every error the library raises on purpose is an :class:`EdgeslmError`. Each carries a one-line
``message``, an optional ``hint`` (what the user can do about it) and an ``exit_code`` that the CLI
uses. The CLI maps these to a single line on stderr; tracebacks appear only with ``--debug``.
Library code never prints or exits.
"""

from __future__ import annotations


class EdgeslmError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.strip().replace("\n", " ")
        if self.hint:
            text += f" (hint: {self.hint.strip()})"
        return text


class UsageError(EdgeslmError):
    """Bad arguments: values out of range, unknown names."""

    exit_code = 2


class ConfigError(EdgeslmError):
    """A target or recipe TOML file is invalid (names the file and the key)."""

    exit_code = 3


class UnknownTargetError(UsageError):
    """A target name that no targets/*.toml defines."""


class ModelSourceError(EdgeslmError):
    """The model to build from is missing, unreadable, corrupt or unsupported."""

    exit_code = 4


class FormatNotImplementedError(EdgeslmError):
    """A target needs an artifact format whose backend is not implemented yet."""

    exit_code = 5


class BackendMissingError(EdgeslmError):
    """The Python package a backend needs is not installed."""

    exit_code = 5


class BuildError(EdgeslmError):
    """The export or quantization step failed."""

    exit_code = 6


class QualityError(BuildError):
    """An artifact's measured quality is worse than the recipe allows."""

    exit_code = 11


class OutputExistsError(EdgeslmError):
    """The output folder exists and --force was not given."""

    exit_code = 7


class DiskSpaceError(EdgeslmError):
    """Not enough free disk space for the build or the copy."""

    exit_code = 8


class BundleError(EdgeslmError):
    """A bundle is missing, malformed, of an unknown schema, or unsafe to unpack."""

    exit_code = 9


class VerificationError(BundleError):
    """Files of a bundle do not match its manifest (missing, extra, truncated or altered)."""

    exit_code = 10

    def __init__(self, message: str, problems: list[str] | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.problems = list(problems or [])
