"""Files on disk: image reading and writing, frame-number patterns, atomic writes.

Used by whole-shot processing, training and uploads; knows nothing of models.
"""
