"""The CogVideoX(-Fun) family (being written)."""
