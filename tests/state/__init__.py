"""Tests of emulator.state."""
