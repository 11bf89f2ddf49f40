"""atheris (libFuzzer) harness for the vmstate loader and `dump`.

Not run by pytest or CI: atheris is not a project dependency. Run it by hand:

    pip install atheris
    python fuzz/fuzz_vmstate.py -atheris_runs=100000        # N inputs, then stop
    python fuzz/fuzz_vmstate.py -max_total_time=600 CORPUS   # keep new inputs in CORPUS/

Other libFuzzer flags pass through (-max_len, -jobs, ...). Without a corpus
directory on the command line, a temporary one is seeded from the golden
streams (fixtures/vmstate/emulator/streams/*.vmstate, fixtures/vmstate/streams/*).

Each input's first byte picks a mode:

- even: the rest is a stream as is (most mutations die at the framing or the
  digest);
- odd: the rest is the frames of a stream without its trailer; the harness
  appends a trailer with the right sha256, as anyone without a key can, so
  mutations reach the CBOR limits and the descriptions.

Streams are loaded with the emulator's registry (`emulator.state.records.registry`),
RAM of a successful load is applied to a scratch buffer, and `dump`
(summarize + render to a string) runs on whatever reads. The only exceptions
allowed out are vmstate.VMStateError subclasses; anything else is a finding
(libFuzzer stops and writes the input to crash-*).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import vmstate  # noqa: E402
    from vmstate.container import encode_item  # noqa: E402
    from vmstate.dump import render, summarize  # noqa: E402

from rich.console import Console  # noqa: E402

from emulator.state.records import registry  # noqa: E402

REGISTRY = registry()
MAX_APPLIED = 64 << 20  # apply RAM only for regions up to this size
SEED_GLOBS = ("fixtures/vmstate/emulator/streams/*.vmstate", "fixtures/vmstate/streams/*")


def reseal(frames: bytes) -> bytes:
    return frames + encode_item(["end", hashlib.sha256(frames).digest(), None])


def unseal(stream: bytes) -> bytes:
    """The frames of a stream without its (unsigned) trailer."""
    trailer = encode_item(["end", b"\0" * 32, None])
    return stream[: len(stream) - len(trailer)]


def one_input(data: bytes) -> None:
    if not data:
        return
    stream = reseal(data[1:]) if data[0] & 1 else data[1:]
    try:
        loaded = vmstate.loads(stream, REGISTRY)
    except vmstate.VMStateError:
        pass
    else:
        for region in loaded.ram.values():
            if region.size <= MAX_APPLIED:
                region.apply_to(bytearray(region.size))
    try:
        raw = vmstate.read_raw(io.BytesIO(stream))
    except vmstate.VMStateError:
        return
    summary = summarize(raw, REGISTRY)
    render(summary, Console(file=io.StringIO(), width=120, highlight=False, soft_wrap=False))


def seed_corpus() -> str:
    corpus = tempfile.mkdtemp(prefix="vmstate-corpus-")
    for pattern in SEED_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            data = path.read_bytes()
            (Path(corpus) / f"{path.name}.raw").write_bytes(b"\0" + data)
            if not path.name.endswith("-hmac.vmstate"):  # a signed trailer is longer
                (Path(corpus) / f"{path.name}.frames").write_bytes(b"\1" + unseal(data))
    return corpus


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(os.path.isdir(a) for a in args[1:] if not a.startswith("-")):
        args.append(seed_corpus())
    if not any(a.startswith("-max_len") for a in args):
        args.append("-max_len=262144")  # the seeds are up to ~75 KB
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
