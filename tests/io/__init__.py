"""Tests of emulator.io."""
