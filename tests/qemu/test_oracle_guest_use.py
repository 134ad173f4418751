"""The project's Use face run inside real-kernel guests (slow, opt-in).

``p2pdma.host.guest_check --destructive`` runs chrooted into this host's ``/``
(shared read-only) in two topologies: one where the kernel allows P2P (a copy
through the CMB must verify byte for byte) and one where it refuses (the I/O must
fail as predicted).  Namespaces are scratch files.
"""

from __future__ import annotations

import json
import sys

import pytest

from p2pdma.oracle.harness import run_in_guest
from p2pdma.oracle.topology import variant_by_name

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("variant", ["switch2", "rootports2"])
def test_guest_check_passes(variant: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    res = run_in_guest(variant_by_name(variant),
                       [sys.executable, "-m", "p2pdma.host.guest_check", "--destructive"],
                       workdir=tmp_path_factory.mktemp("guest"), timeout=900)
    print(res.output)
    summary = [ln for ln in res.output.splitlines() if ln.startswith("P2PDMA-SUMMARY ")]
    assert summary, "guest_check printed no summary"
    counts = json.loads(summary[-1].split(" ", 1)[1])
    assert counts["fail"] == 0
    assert counts["pass"] >= 3
    assert res.returncode == 0
