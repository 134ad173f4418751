"""The one door from the emulator to the kernel-policy layer.

Every who-may-talk-to-whom decision is *asked* of :mod:`p2pdma.kernel`
(docs/internal-contracts.md): ``resolve_profile``, ``pci_p2pdma_map_type`` with
the provider's ``MapTypeCache``, ``distance_many`` and ``find_many`` (both fill
provider caches through ``caches=``, as every kernel calc does).  Nothing here
re-derives a rule; this module only adapts calls and turns the results'
messages into dmesg lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from p2pdma.fabric.bdf import Bdf
from p2pdma.fabric.model import Fabric
from p2pdma.kernel import (
    DistanceResult,
    FindResult,
    KernelProfile,
    MapType,
    MapTypeCache,
    MapTypeResult,
    NonPciClient,
    ProfileChoice,
)
from p2pdma.kernel import distance_many as _distance_many
from p2pdma.kernel import find_many as _find_many
from p2pdma.kernel import pci_p2pdma_map_type as _map_type
from p2pdma.kernel import resolve_profile as _resolve_profile

Client = Bdf | NonPciClient
CacheLookup = Callable[[Bdf], MapTypeCache | None]


def map_type(name: str) -> MapType:
    """``MapType[name]`` (``"BUS_ADDR"``, ``"THRU_HOST_BRIDGE"``, ...)."""
    return MapType[name]


def resolve_profile(release: str | None, override: str | None) -> ProfileChoice:
    return _resolve_profile(release, override)


def new_cache() -> MapTypeCache:
    return MapTypeCache()


def pci_p2pdma_map_type(fabric: Fabric, profile: KernelProfile, cache: MapTypeCache | None,
                        provider: Bdf, client: Client) -> MapTypeResult:
    return _map_type(fabric, profile, cache, provider, client)


def distance_many(fabric: Fabric, profile: KernelProfile, provider: Bdf,
                  clients: Sequence[Client], *, verbose: bool,
                  caches: CacheLookup) -> DistanceResult:
    return _distance_many(fabric, profile, provider, clients, verbose=verbose, caches=caches)


def find_many(fabric: Fabric, profile: KernelProfile, clients: Sequence[Client], *,
              rng: random.Random, has_p2pmem: Callable[[Bdf], bool],
              caches: CacheLookup) -> FindResult:
    return _find_many(fabric, profile, clients, rng=rng, has_p2pmem=has_p2pmem, caches=caches)


def messages_of(result: Any) -> list[str]:
    """The dmesg lines a kernel-layer result carries, in kernel order."""
    return [str(m) for m in getattr(result, "messages", ()) or ()]


def type_name(mt: MapType) -> str:
    return mt.name
