"""Built-in model folder: body pose (BlazePose)."""
