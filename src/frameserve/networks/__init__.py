"""Network architectures of the built-in models, in plain PyTorch (no torchvision)."""
