"""The virtio transport registers both sides share (virtio 1.x, 2.1).

Device status bits are written by the driver and read by the device; the
simulated guest and the device import them from here so that neither needs
the other's module.
"""

from __future__ import annotations

# Device status bits (virtio 1.x, 2.1).
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128
