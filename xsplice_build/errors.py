"""The errors a user can cause, each rendered as one line that says what to do.

Anything raised that is not an XspliceError is a bug in this tool and keeps its
traceback; an XspliceError is the user's input or machine at fault and never does.
"""

from __future__ import annotations


class XspliceError(Exception):
    """A refusal with a one-line message: what is wrong, where, and what to do."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(printable(" ".join(message.split())))

    @property
    def message(self) -> str:
        return str(self)

    def with_note(self, note: str) -> XspliceError:
        """The same refusal, same class, with `note` (where to read more) appended to its line."""
        self.args = (f"{self.message}; {note}",)
        return self


class ConfigError(XspliceError):
    """A baseline definition, patch name, lock file or setting is malformed or unknown."""


class ToolchainMismatch(XspliceError):
    """The compiler or binutils on this machine differ from toolchain.lock."""


class InputError(XspliceError):
    """An input is missing, is not a regular file (a device, a FIFO, a directory), or is too large."""


class OutputError(XspliceError):
    """An output cannot be written, or its path holds something that is not ours to replace."""


class BuildError(XspliceError):
    """A build command failed or did not produce what the baseline says it does."""


class PatchError(XspliceError):
    """A patch does not apply, or touches what it must not."""


class ElfError(XspliceError):
    """An ELF file is malformed, truncated or of the wrong kind."""


class SignatureError(XspliceError):
    """A signature is missing, malformed or does not verify."""


class PayloadRejected(XspliceError):
    """A payload breaks a rule of Xen's livepatch loader, or a running image refused it."""


class NothingToPatch(XspliceError):
    """The patch changes no function that a payload could replace."""

    exit_code = 3


class Unpatchable(XspliceError):
    """The patch changes something a live patch cannot safely change.

    Carries every refusal found, so the user fixes them all in one round.
    """

    exit_code = 4

    def __init__(self, refusals: list[str]) -> None:
        self.refusals = list(refusals)
        first = self.refusals[0] if self.refusals else "unpatchable change"
        more = f" (and {len(self.refusals) - 1} more)" if len(self.refusals) > 1 else ""
        super().__init__(first + more)


def printable(text: str) -> str:
    """`text` with what a terminal would act on or cannot encode escaped (\\x1b, \\udcff).

    Messages name sections and symbols of hostile files: a control character in a name must not
    reach the user's terminal, nor an undecodable byte (kept as a surrogate) crash the printing.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)
