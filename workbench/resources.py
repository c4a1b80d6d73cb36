"""What this machine can hold: a run whose estimated peak memory is over the memory
free now is refused before it starts, with the estimate in the message."""
from __future__ import annotations

from .errors import InputError


def free_memory_bytes() -> int:
    """Memory available to a new allocation now: MemAvailable, or less when a cgroup
    (a container's memory limit) leaves less; a large number when unknown."""
    free = 1 << 62
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_headroom()
    return min(free, limit) if limit is not None else free


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), or None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                raw = fh.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 1 << 60:  # v1 reports "no limit" as a huge number
                return None
            with open(usage_file) as fh:
                used = int(fh.read().strip())
            return max(limit - used, 0)
        except (OSError, ValueError):
            continue
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def check_memory(estimate: int, what: str, fix: str = "lower --n or --batch-size") -> None:
    """Refuse ``what`` when its estimated peak memory is over the free memory."""
    free = free_memory_bytes()
    if estimate > free:
        raise InputError(f"{what} would need about {human_bytes(estimate)} of memory but {human_bytes(free)} is free; {fix}")
