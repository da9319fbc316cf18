"""The front doors: the MLClient and HTTP servers, and the server that opens them.

Doors translate wire bytes into engine requests and results back into bytes, nothing more.
"""
