"""Built-in model folder: face detection (BlazeFace)."""
