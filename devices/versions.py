"""Semantic versions of host OS and agent, stored beside an integer key for range queries."""

import re
from functools import lru_cache

_VERSION = re.compile(r"^v?(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:[-+][0-9A-Za-z.+-]*)?$")


class InvalidVersion(ValueError):
    pass


@lru_cache(maxsize=4096)  # a fleet runs a few versions, and every report carries two
def version_key(version: str) -> int:
    """'2.12.0' -> 2012000; sortable and indexable, so "older than" is an integer comparison."""
    match = _VERSION.match(version.strip())
    if not match:
        raise InvalidVersion(f"{version!r} is not a version like 2.12.0")
    major, minor, patch = (int(part) for part in match.groups())
    return major * 1_000_000 + minor * 1_000 + patch


def is_version(version: str) -> bool:
    return bool(_VERSION.match(version.strip()))


# The seed: purge, reboot, shutdown and the lock override need agent 1.1.0 (the first with an API).
AGENT_API_MIN = version_key("1.1.0")
# OS 2.12.0 introduced named volumes: purge and move delete volumes instead of clearing /data.
OS_NAMED_VOLUMES_MIN = version_key("2.12.0")
