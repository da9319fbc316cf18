"""Built-in model folder: instance segmentation (YOLOX-Nano boxes, Segment Anything masks)."""
