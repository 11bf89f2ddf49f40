"""Tests of emulator.machine."""
