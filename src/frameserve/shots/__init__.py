"""Processing whole shots: the per-frame loop of ``frameserve run`` and where frames compute.

A backend runs a model in this process or on a server; the loop reads, runs and writes frames.
"""
