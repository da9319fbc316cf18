"""Training jobs on a server: the queue, the job records on disk, and serving jobs as models.

The trainer itself is :mod:`frameserve.training`; this package runs it for many clients.
"""
