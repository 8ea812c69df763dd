"""What a benchmark ran on, for its table header and BENCHMARKS.md (shared by the benchmark scripts)."""
import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device) -> str:
    """The GPU's name, or the CPU's model with its core and torch-thread counts."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
