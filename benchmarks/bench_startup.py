"""Start-up time of ``xprim-models path`` and ``list`` against a bare ``python -c pass``.

Builds the wheel, installs it into a fresh venv (bytecode compiled), installs one small
model there, then runs the three commands interleaved, ``--rounds`` times each, and
prints the median wall time and user+system CPU time of each, and its ratio to
``python -c pass`` (the target: within 5x for ``path`` and ``list``; docs/performance.md).
CPU time moves less than wall time on a busy machine.

    python3 benchmarks/bench_startup.py                 # 40 rounds
    python3 benchmarks/bench_startup.py --rounds 200

Needs the build backend (hatchling) installed, as the README's test command does.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def setup(work: Path) -> tuple[Path, Path]:
    """(the venv, its data directory with org/tiny v1 installed)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(work / "dist"), str(HERE)], check=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (wheel,) = (work / "dist").glob("*.whl")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q", str(wheel)],
                   check=True)
    subprocess.run([str(python), "-m", "compileall", "-q", str(venv / "lib")], check=True, stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(HERE / "examples"))
    import publish

    publish.publish(str(work / "registry"), "org", "tiny", "v1", {"weights.bin": os.urandom(3000)}, chunk_size=1024)
    data = work / "data"
    subprocess.run([str(venv / "bin" / "xprim-models"), "--registry", str(work / "registry"), "--data-dir", str(data),
                    "pull", "org/tiny", "v1", "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return venv, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        venv, data = setup(Path(scratch))
        script = str(venv / "bin" / "xprim-models")
        commands = {
            "python -c pass": [str(venv / "bin" / "python"), "-c", "pass"],
            "xprim-models path": [script, "--data-dir", str(data), "path", "org/tiny", "v1"],
            "xprim-models list": [script, "--data-dir", str(data), "list"],
        }
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(options.rounds):
            for name, argv in commands.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, cwd="/")
                wall[name].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    base_wall, base_cpu = statistics.median(wall["python -c pass"]), statistics.median(cpu["python -c pass"])
    print(f"{'command':20} {'wall median':>12} {'ratio':>6} {'cpu median':>11} {'ratio':>6}")
    for name in commands:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:20} {w * 1000:9.1f} ms {w / base_wall:5.2f}x {c * 1000:8.1f} ms {c / base_cpu:5.2f}x")
    print(f"load average at the end: {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
