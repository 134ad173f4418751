"""p2pdma: Linux PCI peer-to-peer DMA made visible, usable and testable."""

__version__ = "0.1.0"
