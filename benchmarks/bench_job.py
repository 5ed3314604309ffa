"""The Slicer acceptance measurement of issue 12: the child-process EnhanceJob against the blocking call.

Polls the job every 100 ms from a main thread that HOLDS THE GIL between polls (ctypes.PyDLL usleep), which is
what PythonQt's main thread does in Slicer, on real MRML (slicer-core), and prints:
- blocking enhance_volume_node seconds vs job seconds (target: job <= 1.25 x blocking + 8 s), same voxels;
- progress reports that reached the caller (target: >= 3 in a 20-40 s run) and the longest gap between them;
- cancel latency mid-inference (target: < 5 s, no process, node or temporary folder left);
- a SIGKILLed child: seconds until the error outcome, the message, nothing added.

    python benchmarks/bench_job.py [--shape 48,56,44] [--model mr-sr-x2] [--threads 1]

Exit code 1 when a target is missed. Testing/test_job_process.py runs it (marked slow).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _node(slicer, shape):  # noqa: ANN001 - slicer is the module
    import numpy as np

    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    rng = np.random.default_rng(1)
    array = 400 * np.exp(-(i**2 + (j - 0.2) ** 2 + k**2) * 3) + 150 * (i**2 + j**2 < 0.3) + rng.normal(0, 5, shape)
    node = slicer.util.addVolumeFromArray(np.maximum(array, 0).astype(np.float32), name="MR")
    node.SetSpacing(1.0, 1.1, 1.8)
    return node


def _poll_holding_gil(job, timeout: float, on_poll=None) -> float:  # noqa: ANN001
    usleep = ctypes.PyDLL(None).usleep
    usleep.argtypes = [ctypes.c_uint]
    t0 = time.perf_counter()
    while not job.poll():
        if on_poll is not None:
            on_poll(time.perf_counter() - t0)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("job did not finish")
        usleep(100_000)
    return time.perf_counter() - t0


def _leftovers() -> set[str]:
    from MedSREnhanceLib.engine.process import FOLDER_PREFIX

    return {p.name for p in Path(tempfile.gettempdir()).glob(FOLDER_PREFIX + "*")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_inference(job, timeout: float = 120) -> None:  # noqa: ANN001
    seen = []
    job.progress_callback = seen.append
    t0 = time.perf_counter()
    while not any(p.stage == "inference" for p in seen):
        if job.poll() or time.perf_counter() - t0 > timeout:
            raise RuntimeError("the job ended before inference began")
        time.sleep(0.05)


def measure(shape: tuple[int, int, int], model: str, threads: int) -> dict[str, float | int | bool | str]:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the child inherits it: both sides get the same threads
    import numpy as np
    import slicer
    import torch

    from MedSREnhanceLib import mrml

    torch.set_num_threads(threads)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    node = _node(slicer, shape)
    t0 = time.perf_counter()
    blocking, _ = mrml.enhance_volume_node(node, task="sr", model=model, scale=2, device="cpu")
    blocking_s = time.perf_counter() - t0
    expected = np.array(slicer.util.arrayFromVolume(blocking), copy=True)
    scene.RemoveNode(blocking)

    reports: list[float] = []
    job = mrml.EnhanceJob(node, task="sr", model=model, scale=2, device="cpu",
                          progress_callback=lambda p: reports.append(p.elapsed)).start()
    job_s = _poll_holding_gil(job, timeout=10 * blocking_s + 60)
    outcome = job.outcome
    same = bool(outcome.ok and np.array_equal(slicer.util.arrayFromVolume(outcome.enhanced_node), expected))
    gaps = np.diff([0.0] + reports + [job_s])
    scene.RemoveNode(outcome.enhanced_node)

    before, n = _leftovers(), scene.GetNumberOfNodes()
    job = mrml.EnhanceJob(node, task="sr", model=model, scale=2, device="cpu").start()
    pid = job.pid
    _wait_for_inference(job)
    t0 = time.perf_counter()
    job.cancel()
    _poll_holding_gil(job, timeout=30)
    cancel_s = time.perf_counter() - t0
    cancel_clean = (job.outcome.cancelled and not _alive(pid) and scene.GetNumberOfNodes() == n
                    and _leftovers() <= before)

    job = mrml.EnhanceJob(node, task="sr", model=model, scale=2, device="cpu").start()
    pid = job.pid
    _wait_for_inference(job)
    os.kill(pid, signal.SIGKILL)
    t0 = time.perf_counter()
    _poll_holding_gil(job, timeout=30)
    kill_s = time.perf_counter() - t0
    kill_clean = (job.outcome.error is not None and not _alive(pid) and scene.GetNumberOfNodes() == n
                  and _leftovers() <= before)
    return {"shape": "x".join(map(str, shape)), "model": model, "threads": threads,
            "blocking_s": blocking_s, "job_s": job_s, "limit_s": 1.25 * blocking_s + 8, "same_voxels": same,
            "reports": len(reports), "longest_gap_s": float(gaps.max()), "cancel_s": cancel_s,
            "cancel_clean": cancel_clean, "kill_s": kill_s, "kill_clean": kill_clean,
            "kill_error": str(job.outcome.error).splitlines()[0]}


def passed(r: dict) -> bool:
    return bool(r["job_s"] <= r["limit_s"] and r["same_voxels"] and r["reports"] >= 3 and r["cancel_s"] < 5
                and r["cancel_clean"] and r["kill_s"] < 5 and r["kill_clean"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="48,56,44", help="k,j,i voxels of the input")
    parser.add_argument("--model", default="mr-sr-x2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    r = measure(shape, args.model, args.threads)  # type: ignore[arg-type]
    sys.stdout.write(
        f"input {r['shape']} (k,j,i), {r['model']} x2, {r['threads']} thread(s), CPU\n"
        f"blocking enhance_volume_node: {r['blocking_s']:.1f} s\n"
        f"EnhanceJob polled every 100 ms, GIL held between polls: {r['job_s']:.1f} s "
        f"(limit 1.25 x blocking + 8 s = {r['limit_s']:.1f} s), same voxels: {r['same_voxels']}\n"
        f"progress reports reaching the caller: {r['reports']}, longest gap {r['longest_gap_s']:.1f} s\n"
        f"cancel mid-inference: ended in {r['cancel_s']:.2f} s, nothing left: {r['cancel_clean']}\n"
        f"child SIGKILLed mid-inference: error outcome in {r['kill_s']:.2f} s, nothing added: {r['kill_clean']}"
        f" ({r['kill_error']})\n"
        f"{'PASS' if passed(r) else 'FAIL'}\n")
    return 0 if passed(r) else 1


if __name__ == "__main__":
    sys.exit(main())
