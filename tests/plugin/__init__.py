"""Tests of emulator.plugin."""
