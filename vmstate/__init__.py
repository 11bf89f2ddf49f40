"""vmstate: a versioned, hardened CBOR state serializer. Knows nothing of virtio.

Describe state on attrs classes, register the sections, save and load streams:

    @vmstate.describe(name="demo", version=2, minimum_version=1)
    @attrs.define
    class Demo:
        count: int = vmstate.field(vmstate.U32)
        label: str = vmstate.field(vmstate.Str, since=2, default="")

    registry = vmstate.Registry()
    registry.register(Demo)
    data = vmstate.dumps([Demo(3, "x")], producer="me", ram={"ram": memory})
    loaded = vmstate.loads(data, registry)
    loaded.section("demo")            # -> Demo(count=3, label='x')
    loaded.ram["ram"].apply_to(memory)

See docs/vmstate.md for the format and the command line tools.
"""

from .container import FORMAT_VERSION, MAGIC, Header, Limits
from .description import Description, FieldSpec, SubsectionSpec, describe, description_of, field, subsection
from .errors import CorruptStream, IncompatibleVersion, IntegrityError, ValidationError, VMStateError
from .load import LoadedSection, LoadedStream, RamItem, RawStream, build, dumps, load, loads, read_raw, resave, save
from .ram import PageRun, RamRegion, page_runs
from .registry import Registry
from .stream import StreamReader, StreamWriter
from .types import U8, U16, U32, U64, Bitmap, Bool, Bytes, ListOf, Nested, Optional, Str, UInt, VType

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Header",
    "Limits",
    "Description",
    "FieldSpec",
    "SubsectionSpec",
    "describe",
    "description_of",
    "field",
    "subsection",
    "VMStateError",
    "IncompatibleVersion",
    "CorruptStream",
    "IntegrityError",
    "ValidationError",
    "LoadedSection",
    "LoadedStream",
    "RamItem",
    "RawStream",
    "build",
    "dumps",
    "load",
    "loads",
    "read_raw",
    "resave",
    "save",
    "PageRun",
    "RamRegion",
    "page_runs",
    "Registry",
    "StreamReader",
    "StreamWriter",
    "U8",
    "U16",
    "U32",
    "U64",
    "UInt",
    "Bool",
    "Bytes",
    "Str",
    "Bitmap",
    "ListOf",
    "Optional",
    "Nested",
    "VType",
]
