"""The ``vserial`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="vserial",
        description="Emulate QEMU's virtio-serial bus with a simulated Linux guest.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="boot a machine, move data, hot-plug, and show the ports")
    demo.add_argument("--trace", action="store_true", help="print the virtio_serial_* trace")
    sub.add_parser("vmstate", help="inspect and check state streams (vserial vmstate --help)", add_help=False)
    sub.add_parser("run", help="run a machine from a QEMU command line (vserial run -help)", add_help=False)

    if args and args[0] == "vmstate":
        from emulator.state.records import registry
        from vmstate.cli import main as vmstate_main

        return vmstate_main(args[1:], registry=registry())
    if args and args[0] == "run":
        from emulator.runtime.cmdline import main as run_main

        return run_main(args[1:])
    ns = parser.parse_args(args)
    if ns.command == "demo":
        from emulator.cli.demo import run_demo

        run_demo(show_trace=ns.trace)
        return 0
    parser.print_help()
    return 2


def entry() -> None:
    """Console script: like main(), quiet when the reader goes away (| head)."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at devnull so the interpreter's final flush is silent.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code)


if __name__ == "__main__":
    entry()
