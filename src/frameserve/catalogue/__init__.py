"""Which models exist: model folders and packages on disk, their versions, and hot reload.

The registry is the one answer to "what can be served"; the engine asks it, never the disk.
"""
