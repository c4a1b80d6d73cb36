"""What this machine can hold: a run whose estimated peak memory is over the memory
free now is refused before it starts, with the estimate in the message."""
from __future__ import annotations

from .errors import InputError


def free_memory_bytes() -> int:
    """Memory available to a new allocation now (MemAvailable), or a large number when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


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
