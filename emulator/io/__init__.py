"""The real-I/O layer: chardev backends that move bytes through file
descriptors (QEMU's ``-chardev`` kinds, one ``char_*.py`` per QEMU
chardev/char-*.c file; ``backend.py`` holds what they share,
``builtin_backends.py`` the list the built-in plugin registers) and the
poll(2) main loop (``mainloop.py``)."""
