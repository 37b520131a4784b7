"""Jobs on Redis Streams: the adapter side (client.py, an InferenceBackend), the `toonify worker`
side (consumer.py), the names they share (keys.py) and the bytes between them (wire.py)."""
