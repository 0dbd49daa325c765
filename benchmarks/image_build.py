"""Environment image build: k8s_executor's layered push vs podman, in one run.

A venv with numpy, pandas, scipy and scikit-learn (~390 MB, made once with pip from PyPI
and kept in ~/.cache/k8s-executor/bench/venv) goes, on the Debian base image of
.ci/containers.sh, to a fresh loopback registry:

    oci-gzip      build_image(): layers written by Python, uploaded straight to the
                  registry (gzip level 1), only those it lacks      — the default
    oci-none      the same, uncompressed layers
    podman-load   build_image(method="podman"): the same layers, loaded into podman,
                  pushed by podman
    containerfile `podman build` of a Containerfile that COPYs the venv (and re-points
                  bin/python at the base interpreter), then `podman push`

each three times: cold (empty registry and caches), warm (nothing changed) and after
adding one small package (tabulate, ~35 kB, from PyPI; removed again at the end).
"Pushed" is what the registry's storage grew by (a fresh registry for each kind, so every
cold build includes the base image's layer; podman's build cache is pruned first). Finally
each image imports numpy, pandas, scipy and sklearn in a fresh container (time of that
`podman run`, the image already pulled; for the default, also with its .pyc ignored).

    python benchmarks/image_build.py [--runs oci-gzip,containerfile] [--json] [--write]

``--write`` rewrites this benchmark's section of benchmarks/README.md (between the
``<!-- image_build:start -->`` and ``<!-- image_build:end -->`` markers) and nothing else.

Needs what `bash .ci/containers.sh` installs. Uses both cores; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import load_average, machine, run_line, write_section  # noqa: E402

from k8s_executor.image import build_image  # noqa: E402
from tests.image import infra  # noqa: E402

BENCH_DIR = Path.home() / ".cache" / "k8s-executor" / "bench"
VENV = BENCH_DIR / "venv"
PACKAGES = ["numpy", "pandas", "scipy", "scikit-learn"]
EXTRA = "tabulate"
PROBE = "import numpy, pandas, scipy, sklearn, sklearn.ensemble"
RUNS = ("oci-gzip", "oci-none", "podman-load", "containerfile")
LABELS = {
    "oci-gzip": "`build_image()` (default: direct upload, gzip)",
    "oci-none": '`build_image(compression="none")`',
    "podman-load": '`build_image(method="podman")` (load + podman push)',
    "containerfile": "`podman build` (Containerfile COPY) + `podman push`",
}


def ensure_venv() -> None:
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys._base_executable, "-m", "venv", str(VENV)], check=True)  # type: ignore[attr-defined]
        pip(["install", *PACKAGES])
    pip(["uninstall", "-y", EXTRA])


def pip(args: list[str]) -> None:
    subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check", *args],
        check=True,
        stderr=subprocess.DEVNULL if args[0] == "uninstall" else None,
    )


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def containerfile_build(podman: infra.PodmanService, tag: str, remote: str) -> None:
    venv = str(VENV)
    with tempfile.TemporaryDirectory() as tmp:
        cf = Path(tmp) / "Containerfile"
        cf.write_text(
            f"FROM {infra.BASE_IMAGE}\n"
            f"COPY . {venv}\n"
            f"RUN for p in python python3 python3.11; do ln -sf /usr/bin/python3.11 {venv}/bin/$p;"
            f" done && sed -i 's|^home = .*|home = /usr/bin|' {venv}/pyvenv.cfg\n"
            f"ENV PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        )
        podman.cli("build", "--quiet", "--network", "host", "-f", str(cf), "-t", tag, venv)
    podman.cli("push", "--quiet", "--tls-verify=false", tag, remote)


def bench(run: str, work: Path, podman: infra.PodmanService) -> list[dict[str, object]]:
    """Cold, warm and +1 package builds of one kind, into a registry of its own (so that
    "cold" includes the base image's layer for every kind), then a run of the image."""
    results: list[dict[str, object]] = []
    os.environ["K8SX_CACHE_DIR"] = str(work / f"cache-{run}")
    registry = infra.start_registry(work / f"registry-{run}")
    local_cf = f"localhost/k8sx-bench-cf:{os.getpid()}"
    # Cold for podman too: no build cache left by an earlier run (only untagged images go;
    # the base image stays).
    podman.cli("image", "prune", "--force")
    try:
        image = ""
        for step in ("cold", "warm", "+1 package"):
            if step == "+1 package":
                pip(["install", EXTRA])
            before = du(registry.storage)
            start = time.perf_counter()
            if run == "containerfile":
                containerfile_build(podman, local_cf, f"{registry.host}/bench:1")
                image, detail = local_cf, ""
            else:
                ref = build_image(
                    registry.host,
                    repository="bench",
                    base_image=infra.BASE_IMAGE,
                    prefix=VENV,
                    podman_url=podman.url,
                    compression="none" if run == "oci-none" else "gzip",
                    method="podman" if run == "podman-load" else "oci",
                )
                image = ref.reference
                detail = f"{ref.layers_pushed} pushed / {ref.layers_reused} reused"
            seconds = time.perf_counter() - start
            pushed = du(registry.storage) - before
            results.append({"run": run, "step": step, "s": seconds, "MB": pushed / 1e6})
            print(f"{run:14} {step:11} {seconds:7.2f} s {pushed / 1e6:8.1f} MB  {detail}")
        pip(["uninstall", "-y", EXTRA])
        if run != "containerfile":
            podman.cli("pull", "--quiet", "--tls-verify=false", image)
        variants: list[tuple[str, list[str]]] = [("run: import", [])]
        if run == "oci-gzip":
            # Without the shipped .pyc files (Python looks for them elsewhere, so every
            # module is compiled): what keeping them saves at each pod start.
            variants.append(("run: import, no pyc", ["-e", "PYTHONPYCACHEPREFIX=/tmp/x"]))
        for step, extra in variants:
            start = time.perf_counter()
            podman.cli("run", "--rm", "--network", "host", *extra, image, "python", "-c", PROBE)
            seconds = time.perf_counter() - start
            results.append({"run": run, "step": step, "s": seconds})
            print(f"{run:14} {step:11} {seconds:7.2f} s")
    finally:
        podman.cli("rmi", "--force", local_cf, check=False)
        infra.stop_process(registry.process)
    return results


def table(results: list[dict[str, object]]) -> str:
    """Markdown: one row per run, one column per step (time, and MB pushed)."""
    rows = [
        "| build | cold | warm (unchanged) | +1 small package | `podman run` importing all "
        "| same, .pyc ignored |",
        "|---|---|---|---|---|---|",
    ]
    for run in dict.fromkeys(str(r["run"]) for r in results):
        cells = []
        for step in ("cold", "warm", "+1 package", "run: import", "run: import, no pyc"):
            r = next((r for r in results if r["run"] == run and r["step"] == step), None)
            if r is None:
                cells.append("")
            elif "MB" in r:
                cells.append(f"{r['s']:.2f} s, {r['MB']:.1f} MB")
            else:
                cells.append(f"{r['s']:.2f} s")
        rows.append(f"| {LABELS.get(run, run)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_readme(body: str, command: str, took: float) -> None:
    generated = (
        f"{run_line(command, took)}\n\n"
        f"{machine()}; load average after: {load_average()}. "
        f"Venv: {', '.join(PACKAGES)} ({du(VENV) / 1e6:.0f} MB); registry on loopback.\n\n" + body
    )
    write_section("image_build", generated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args()
    began = time.perf_counter()
    runs = [r for r in args.runs.split(",") if r]

    ensure_venv()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="k8sx-bench-") as tmp:
        work = Path(tmp)
        podman = infra.start_podman_service(work / "podman")
        try:
            for run in runs:
                results += bench(run, work, podman)
        finally:
            infra.stop_process(podman.process)
            pip(["uninstall", "-y", EXTRA])
    print()
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=1))
    if args.write:
        command = "python benchmarks/image_build.py " + " ".join(sys.argv[1:])
        write_readme(table(results), command.strip(), time.perf_counter() - began)


if __name__ == "__main__":
    main()
