"""Cache access: the Redis layout (keys, metadata values, change log) and the stores that read it."""
