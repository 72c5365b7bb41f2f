"""dfdetect: audio deepfake detection built for honest generalization experiments."""

__version__ = "0.1.0"
