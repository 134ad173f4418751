"""The ``p2pdma`` command line (thin: parse, call the layers, print)."""
