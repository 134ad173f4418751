"""Summary lines of the QEMU oracle runs, printed at the end of the pytest run so that
CI logs show how many topologies and pairs were compared and how many mismatched."""

LINES: list[str] = []
