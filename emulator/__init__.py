"""vserial: an emulation of QEMU's virtio-serial bus and a simulated Linux guest."""
