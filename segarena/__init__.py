"""segarena: a semantic-segmentation competition toolkit."""

__version__ = "0.1.0"
