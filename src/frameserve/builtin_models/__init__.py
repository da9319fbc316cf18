"""The models frameserve ships: each folder holds a ``model.py``, exactly like a studio's own."""
