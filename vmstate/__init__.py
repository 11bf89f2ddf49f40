"""vmstate: a versioned, hardened CBOR state serializer. Knows nothing of virtio."""
