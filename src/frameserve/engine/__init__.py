"""Running requests: the checked request, the scheduler (when), the runner (where and how).

The front doors see one :class:`~frameserve.engine.engine.Engine`; the rest serves those three.
"""
