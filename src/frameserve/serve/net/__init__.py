"""Sockets for the front doors: the threaded listener and exact, deadline-bound reads and writes.

Protocol-neutral: the MLClient and HTTP doors build on it.
"""
