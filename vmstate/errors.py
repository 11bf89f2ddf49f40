"""The few errors vmstate raises.

One base, then "the two sides disagree" (IncompatibleVersion), "the bytes are
garbage" (CorruptStream, IntegrityError) and "a value is not what its
description allows" (ValidationError). Loading raises only these; a failed load
has changed nothing.
"""

from __future__ import annotations


class VMStateError(Exception):
    """Base of every error vmstate raises on purpose."""


class IncompatibleVersion(VMStateError):
    """The stream and the local descriptions cannot be reconciled.

    A section or nested description whose version is newer than the local one or
    older than the local minimum, a section or subsection unknown here, or a
    stream written in a container format this code does not read.
    """


class CorruptStream(VMStateError):
    """The stream is truncated, oversized, not canonical CBOR of the expected
    shape, or otherwise not a vmstate stream."""


class IntegrityError(CorruptStream):
    """The trailer's digest or HMAC does not match what came before it: the
    stream was altered, or was written with another key (or none)."""


class ValidationError(VMStateError):
    """A value is outside its type's range, of the wrong type, or refused by the
    record's own validators. `path` names the field, e.g.
    ``virtio-serial/ports[3]/host_connected``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason
