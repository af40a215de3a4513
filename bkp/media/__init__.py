"""Data carriers: the register, device facts, the wipe engine, sanitization and destruction."""
