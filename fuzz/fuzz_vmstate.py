"""atheris (libFuzzer) harness for the vmstate loader and `dump`.

atheris is not a project dependency (`pip install atheris`). Fuzz:

    python fuzz/fuzz_vmstate.py -atheris_runs=100000        # N inputs, then stop
    python fuzz/fuzz_vmstate.py -max_total_time=600 CORPUS   # keep new inputs in CORPUS/

Other libFuzzer flags pass through (-max_len, -jobs, ...). Without a corpus
directory on the command line, a temporary one is seeded from the golden
streams (fixtures/vmstate/emulator/streams/*.vmstate, fixtures/vmstate/streams/*);
an empty corpus directory given on the command line is seeded the same way.

Replay (no atheris needed): with only files on the command line, each is
run once through `one_input` and reported; the exit status is 1 if any of
them raised what the loader must not raise:

    python fuzz/fuzz_vmstate.py crash-0123abcd [more files]

tests/vmstate/test_vmstate_fuzz.py replays inputs through `one_input` in
CI, and runs the fuzzer for a few seconds when atheris imports.

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

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def replaying(argv: list[str]) -> bool:
    """Only files on the command line: replay them, no fuzzing."""
    positional = [a for a in argv[1:] if not a.startswith("-")]
    return bool(positional) and all(os.path.isfile(a) for a in positional)


# When fuzzing, the loader's modules are imported under atheris'
# instrumentation (only those: instrumenting everything takes longer than a
# CI run).  Imported as a module, or replaying, atheris is not needed.
FUZZING = __name__ == "__main__" and not replaying(sys.argv)
with contextlib.ExitStack() as _imports:
    if FUZZING:
        import atheris

        _imports.enter_context(atheris.instrument_imports(include=["vmstate", "cbor2", "emulator.state"]))
    import vmstate
    from vmstate.container import encode_item
    from vmstate.dump import render, summarize

    from emulator.state.records import registry

from rich.console import Console  # noqa: E402

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


def seed_corpus(corpus: str | None = None) -> str:
    corpus = corpus or tempfile.mkdtemp(prefix="vmstate-corpus-")
    for pattern in SEED_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            data = path.read_bytes()
            (Path(corpus) / f"{path.name}.raw").write_bytes(b"\0" + data)
            if not path.name.endswith("-hmac.vmstate"):  # a signed trailer is longer
                (Path(corpus) / f"{path.name}.frames").write_bytes(b"\1" + unseal(data))
    return corpus


def replay(paths: list[str], target: Callable[[bytes], None] | None = None, out: object = None) -> int:
    """Run each file once through ``target`` (``one_input``); print one line
    per file (and the traceback of a finding).  Returns the number of findings."""
    target = target or one_input
    stream = out if out is not None else sys.stdout
    findings = 0
    for path in paths:
        data = Path(path).read_bytes()
        try:
            target(data)
        except Exception:  # a finding: anything but VMStateError got out
            findings += 1
            print(f"{path}: CRASH ({len(data)} bytes)", file=stream)  # type: ignore[call-overload]
            traceback.print_exc(file=stream)  # type: ignore[arg-type]
        else:
            print(f"{path}: ok ({len(data)} bytes)", file=stream)  # type: ignore[call-overload]
    return findings


def main(argv: list[str]) -> int:
    args = list(argv)
    positional = [a for a in args[1:] if not a.startswith("-")]
    if replaying(argv):
        findings = replay(positional)
        print(f"replayed {len(positional)} input(s): {findings} crash(es)")
        return 1 if findings else 0
    import atheris

    dirs = [a for a in positional if os.path.isdir(a)]
    if not dirs:
        args.append(seed_corpus())
    elif not os.listdir(dirs[0]):
        seed_corpus(dirs[0])
    if not any(a.startswith("-max_len") for a in args):
        args.append("-max_len=262144")  # the seeds are up to ~75 KB
    atheris.Setup(args, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
