"""The error tree of edgeslm.

Every error the library raises on purpose is an :class:`EdgeslmError`. Each carries a one-line
``message``, an optional ``hint`` (what the user can do about it) and an ``exit_code`` that the CLI
uses. The CLI maps these to a single line on stderr; tracebacks appear only with ``--debug``.
Library code never prints or exits.

Library code does not know the command line's flags: where a message or hint names an option it
writes the library's parameter name in double brackets, ``[[force]]``. ``one_line()`` renders it as
```force``` for library callers; the CLI passes its own spelling (``cli/option_flags.py``: ``--force``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

OPTION = re.compile(r"\[\[([a-z_]+)\]\]")


class EdgeslmError(Exception):
    """Base class: a problem the user can act on."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self, spell: Callable[[str], str] | None = None) -> str:
        """Message and hint on one line, ``[[option]]`` names spelled by ``spell`` (default: ```option```)."""
        text = self.message.strip().replace("\n", " ")
        if self.hint:
            text += f" (hint: {self.hint.strip()})"
        spell = spell or (lambda name: f"`{name}`")
        return OPTION.sub(lambda m: spell(m.group(1)), text)


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


class BackendMissingError(EdgeslmError):
    """The Python package a backend needs is not installed."""

    exit_code = 5


class BuildError(EdgeslmError):
    """The export or quantization step failed."""

    exit_code = 6


class QualityError(BuildError):
    """An artifact's measured quality is worse than the recipe allows."""

    exit_code = 18


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


class ContextLengthError(EdgeslmError):
    """The prompt does not fit in the context this host allows for the artifact."""

    exit_code = 11


class NoArtifactError(EdgeslmError):
    """No artifact of the bundle can run on this host."""

    exit_code = 12


class EngineLoadError(EdgeslmError):
    """The runtime package is installed but cannot load the artifact here (driver, device, SDK, memory)."""

    exit_code = 17


class FlashIOError(EdgeslmError):
    """The device or folder refused a write (read-only, full, permission)."""

    exit_code = 13


class SshError(EdgeslmError):
    """SSH connection, authentication, host key or remote command failure."""

    exit_code = 14


class AdbError(EdgeslmError):
    """adb is missing, the device is not attached, or a command on it failed."""

    exit_code = 15


class FleetFlashError(EdgeslmError):
    """Some devices of a fleet flash failed (each one's reason is in the summary)."""

    exit_code = 16


class SignatureError(VerificationError):
    """A bundle's signature is missing, by an untrusted key, invalid, or over another manifest."""

    exit_code = 19

    def __init__(self, message: str, kind: str, hint: str | None = None):
        super().__init__(message, problems=[kind], hint=hint)
        self.kind = kind  # unsigned | unknown-key | bad-signature | stale-signature | not-the-signed-manifest


class KeyFileError(EdgeslmError):
    """A signing or public key file is missing, unreadable, too open, or needs a passphrase."""

    exit_code = 20


class GgufFileError(BundleError):
    """A GGUF artifact is truncated, not a GGUF file, holds a tensor type edgeslm does not use, or does not
    match the bundle's manifest (architecture, shape or tokenizer)."""


class RemoteError(EdgeslmError):
    """The remote fallback engine failed: network down, no answer in time, rate limited or a server error
    after its retries, or an answer it cannot read. Messages never contain the API key."""

    exit_code = 30


class RemoteAuthError(RemoteError):
    """The remote service refused the key (401/403), or the environment variable naming it is not set."""

    exit_code = 31


class RemoteNotFoundError(RemoteError):
    """The remote service has no such model or path (404): a wrong model id or base URL in remote.toml."""

    exit_code = 32


class RemoteInputError(UsageError):
    """A request the remote fallback cannot take (an image that is not a data: URL-able image, an image for
    a remote without a vision model); ``param`` names the request field, as for images."""

    def __init__(self, message: str, hint: str | None = None, param: str | None = None):
        super().__init__(message, hint)
        self.param = param


class RegistryError(EdgeslmError):
    """An OCI registry push or pull failed: registry down, TLS, an unexpected answer, a blob whose digest
    does not match."""

    exit_code = 21


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (401/403), or needs some and none were found."""

    exit_code = 22


class RegistryNotFoundError(RegistryError):
    """The registry has no such repository, tag or digest."""

    exit_code = 23
