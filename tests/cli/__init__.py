"""Tests of emulator.cli."""
