"""What a model author writes against: the model contract, knob specs, result objects, frames.

Nothing here knows about wire formats, queues or devices; :mod:`frameserve` re-exports the names.
"""
