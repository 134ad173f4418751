"""sources: turn the outside world into a Fabric.

- :func:`read_sysfs` — a sysfs/procfs tree under a root path (``"/"``: this machine);
- :func:`write_sysfs` — any Fabric as a synthetic tree that reads back equal;
- :func:`gather` / :func:`read_snapshot` — one snapshot file, read in place;
- :func:`load_fabric_file` / :func:`loads_fabric` / :func:`dumps_fabric` — fabric files.
"""

from p2pdma.sources.fabricfile import dumps_fabric, load_fabric_file, loads_fabric
from p2pdma.sources.snapshot import gather, read_snapshot
from p2pdma.sources.synthetic import sysfs_canonical, unprivileged_view, write_sysfs
from p2pdma.sources.sysfs import read_sysfs

__all__ = ["dumps_fabric", "gather", "load_fabric_file", "loads_fabric", "read_snapshot",
           "read_sysfs", "sysfs_canonical", "unprivileged_view", "write_sysfs"]
