"""Tenant databases: consistent dumps, their table inventories, and the scratch servers a
drill loads them into (scratch.py)."""
