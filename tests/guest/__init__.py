"""Tests of emulator.guest."""
