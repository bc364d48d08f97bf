"""Shared benchmark settings: every benchmark pins its thread count and names the machine."""
import os
import platform

import pytest


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    import minillm
    machine_info["cpu_model"] = cpu_model()
    machine_info["minillm"] = minillm.cpu_info()
    machine_info["threads"] = os.environ.get("MINILLM_NUM_THREADS", "unset")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import minillm
    n = int(os.environ.get("MINILLM_NUM_THREADS", "2"))
    minillm.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
