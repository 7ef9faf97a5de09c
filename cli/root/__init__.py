"""dreamreel: DeepDream for video and animation."""

__version__ = "0.1.0"
