"""Where models run: in the server process, or each model version in a worker process.

:mod:`.host` is the interface the scheduler runs requests through (:class:`ModelHost`) and the
in-process host; :mod:`.processes` the process host, :mod:`.supervisor` what keeps one model's
worker alive (deadlines, restarts, memory caps), :mod:`.worker` the server's handle on one
process, :mod:`.process` what runs inside it, :mod:`.transport` the shared memory frames
cross in, and :mod:`.channel` the messages that refer to them.
"""
