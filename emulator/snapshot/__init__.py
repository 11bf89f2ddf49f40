"""Whole-machine snapshots on disk: the snapshot store (``store.py``, one
file per tag in a snapshot directory, written atomically) and QEMU's HMP
``info snapshots`` table (``info_snapshots.py``).  The stream bytes are
opaque here: the state records (``emulator.state``) make and read them."""
