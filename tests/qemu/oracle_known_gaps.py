"""Gaps in other layers that real-kernel captures exposed, by variant name.

Tests treat these as expected failures (non-strict: they pass by themselves once the
gap is fixed; then delete the entry).  History: ``rcie``/``rcie-epyc`` (the reader
rejected ``max_link_width=255`` on a root-complex integrated NVMe) — fixed.
"""

KNOWN_GAPS: dict[str, str] = {}
