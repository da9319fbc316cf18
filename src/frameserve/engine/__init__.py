"""Running requests: the checked request, the scheduler (when), the runner (where and how).

Colour, devices, tiles, the model pool, the result cache and metrics serve those three.
"""
