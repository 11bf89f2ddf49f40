"""Tests of emulator.runtime."""
