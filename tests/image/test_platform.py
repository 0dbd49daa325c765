"""Images for another platform (platform=): platform-specific packages are installed for
the target by pip from a wheelhouse, pure-Python ones (local and editable included) are
copied, local compiled code is refused with the fix.

This machine is linux/amd64, so the other platform is linux/arm64. pip only ever sees a
local wheelhouse (PIP_NO_INDEX + PIP_FIND_LINKS: the user's pip configuration, passed
through). The "arm64" base image is the amd64 test base with its config relabelled: the
image really is for arm64 as far as the builder and registries can tell, yet podman can
still run it here, so its console script, .pth file and packages are exercised for real
(the "compiled" modules are placeholders that nothing loads).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ConfigError, KubernetesExecutor
from k8s_executor.image import (
    BaseImageError,
    ImageRef,
    PlatformError,
    build_image,
    fingerprint,
    local_platform,
    scan_environment,
)
from k8s_executor.image._cross import Target, prepare, split_distributions
from k8s_executor.image._layers import plan_layers
from k8s_executor.image._platform import Libc, check_platform, wheel_platform_tags
from k8s_executor.image._registry import OCI_INDEX, Registry, split_reference
from tests.image.conftest import BaseImage, PodmanService, RegistryServer, TinyEnv
from tests.image.envs import make_editable_project, make_wheel, pip_install

LOCAL_SO = "fastpkg/_speed.cpython-311-x86_64-linux-gnu.so"
TARGET_SO = "fastpkg/_speed.cpython-311-aarch64-linux-gnu.so"
SITE = "lib/python3.11/site-packages"


@pytest.fixture(autouse=True)
def _local_is_amd64() -> None:
    if local_platform() != "linux/amd64":
        pytest.skip("these tests build for linux/arm64 from a linux/amd64 machine")


def _fastpkg(directory: Path, arch: str, tag: str) -> Path:
    """A "compiled" distribution: a placeholder extension module, a console script and a
    .pth file, each telling which architecture the wheel was for."""
    return make_wheel(
        directory,
        "fastpkg",
        "1.0",
        {
            "fastpkg/__init__.py": (
                f"ARCH = {arch!r}\n\ndef main():\n    print('fast-cli on', ARCH)\n"
            ),
            f"fastpkg/_speed.cpython-311-{arch}-linux-gnu.so": f"not really {arch} code\n",
            "fastpkg_arch.pth": f"import os; os.environ['FASTPKG_PTH'] = {arch!r}\n",
        },
        tag=tag,
        entry_points="[console_scripts]\nfast-cli = fastpkg:main\n",
    )


@dataclass(frozen=True)
class CrossEnv:
    env: TinyEnv
    wheelhouse: Path
    """Wheels for linux/arm64: what pip may install."""


@pytest.fixture
def cross_env(tiny_env: TinyEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CrossEnv:
    """tiny_env plus fastpkg installed from an x86_64 wheel; a wheelhouse with its aarch64
    wheel, and pip pointed at that wheelhouse alone."""
    local = _fastpkg(tiny_env.wheels, "x86_64", "cp311-cp311-manylinux_2_17_x86_64")
    pip_install(tiny_env.venv, str(local))
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    _fastpkg(wheelhouse, "aarch64", "cp311-cp311-manylinux_2_17_aarch64")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    return CrossEnv(tiny_env, wheelhouse)


# --- options -------------------------------------------------------------------------------


def test_platform_values_are_checked() -> None:
    assert check_platform(None) is None
    assert check_platform("linux/arm64") == "linux/arm64"
    with pytest.raises(ConfigError) as info:
        check_platform("linux/s390x")
    message = str(info.value)
    assert "platform='linux/s390x' is not allowed" in message
    assert "'linux/amd64', 'linux/arm64'" in message


def test_the_executor_checks_platform_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"platform='arm64' is not allowed.*'linux/arm64'"):
        KubernetesExecutor(
            backend="kubernetes",
            image="example.invalid/img:1",
            storage=str(tmp_path),
            platform="arm64",
        )


def test_the_cli_passes_platform_through(capsys: pytest.CaptureFixture[str]) -> None:
    from k8s_executor import cli

    argv = ["build", "--registry", "127.0.0.1:9", "--platform", "windows/amd64"]
    assert cli.main(argv) == 1
    assert "platform='windows/amd64' is not allowed" in capsys.readouterr().err


def test_wheel_tags_follow_the_base_libc() -> None:
    arm = wheel_platform_tags("linux/arm64", Libc("glibc", (2, 36)))
    assert arm[0] == "manylinux_2_36_aarch64"
    assert arm[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    amd = wheel_platform_tags("linux/amd64", Libc("glibc", (2, 28)))
    assert amd[0] == "manylinux_2_28_x86_64"
    assert "manylinux2010_x86_64" in amd
    assert amd[-1] == "manylinux1_x86_64"
    assert wheel_platform_tags("linux/amd64", Libc("musl", (1, 2))) == [
        "musllinux_1_2_x86_64",
        "musllinux_1_1_x86_64",
        "musllinux_1_0_x86_64",
    ]


# --- which distributions are copied, installed again, or refused -----------------------------


def test_distributions_are_split_by_what_they_contain(cross_env: CrossEnv) -> None:
    split = split_distributions(scan_environment(cross_env.env.venv))
    assert {d.name for d in split.copied} == {"tinypkg", "localpkg"}
    assert [d.name for d in split.resolved] == ["fastpkg"]
    assert split.refused == ()


def test_packages_are_installed_for_the_target_from_the_wheelhouse(cross_env: CrossEnv) -> None:
    env = scan_environment(cross_env.env.venv)
    target = Target("linux/arm64", (3, 11), Libc("glibc", (2, 36)), env.prefix)
    staged = prepare(env, target)
    assert staged.replaced == {"fastpkg"}
    assert f"{SITE}/{TARGET_SO}" in staged.files
    assert f"{SITE}/{LOCAL_SO}" not in staged.files
    assert f"{SITE}/fastpkg_arch.pth" in staged.files
    # pip compiled the sources: the image ships their pycs, as for copied packages.
    assert f"{SITE}/fastpkg/__pycache__/__init__.cpython-311.pyc" in staged.files
    script = Path(staged.files["bin/fast-cli"][0]).read_text()
    assert script.startswith(f"#!{env.prefix}/bin/python")
    record = Path(staged.files[f"{SITE}/fastpkg-1.0.dist-info/RECORD"][0]).read_text()
    assert "../../../bin/fast-cli," in record  # right for the venv's layout
    # Installed once: a second build takes them from the cache (pip finds nothing now).
    for wheel in cross_env.wheelhouse.iterdir():
        wheel.unlink()
    again = prepare(env, target)
    assert again.files.keys() == staged.files.keys()
    assert all(again.files[k][1].st_ino == staged.files[k][1].st_ino for k in staged.files)


def test_layers_take_the_target_files_in_place_of_the_local_ones(
    cross_env: CrossEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = scan_environment(cross_env.env.venv)
    site = env.site_packages[0]
    (site / "handmade.cpython-311-x86_64-linux-gnu.so").write_text("no RECORD lists it")
    (site / "handmade.py").write_text("X = 1\n")
    local_plans = plan_layers(env, base_python="/usr/bin/python3.11")
    staged = prepare(env, Target("linux/arm64", (3, 11), Libc("glibc", (2, 36)), env.prefix))
    plans = plan_layers(env, base_python="/usr/bin/python3.11", staged=staged)
    entries = {e.arcname: e for plan in plans for e in plan.entries}
    venv = env.prefix.as_posix().lstrip("/")
    assert f"{venv}/{SITE}/{TARGET_SO}" in entries
    assert f"{venv}/{SITE}/{LOCAL_SO}" not in entries
    assert f"{venv}/{SITE}/handmade.py" in entries  # unowned, copied as always
    assert f"{venv}/{SITE}/handmade.cpython-311-x86_64-linux-gnu.so" not in entries
    assert "left out 1 compiled files that no installed package owns" in caplog.text
    pyc = entries[f"{venv}/{SITE}/fastpkg/__pycache__/__init__.cpython-311.pyc"]
    assert pyc.source == staged.files[f"{SITE}/fastpkg/__pycache__/__init__.cpython-311.pyc"][0]
    assert pyc.pyc_source is not None  # valid for its (staged) source: header rewritten
    # Same layer names as a local build: the target's fastpkg goes into the same bucket.
    by_name = {p.name: p for p in plans}
    assert [p.name for p in local_plans] == list(by_name)
    (bucket,) = [p for p in plans if "fastpkg" in p.distributions]
    assert bucket.name.startswith("bucket-")


def test_every_package_without_a_wheel_for_the_target_is_named(cross_env: CrossEnv) -> None:
    for name in ("slowpkg", "rarepkg"):
        wheel = make_wheel(
            cross_env.env.wheels,
            name,
            "2.0",
            {f"{name}/__init__.py": "", f"{name}/_c.cpython-311-x86_64-linux-gnu.so": "x"},
            tag="cp311-cp311-manylinux_2_17_x86_64",
        )
        pip_install(cross_env.env.venv, str(wheel))
    # A wheel exists, but for a newer glibc than the base image has: it does not fit.
    make_wheel(
        cross_env.wheelhouse,
        "rarepkg",
        "2.0",
        {"rarepkg/__init__.py": ""},
        tag="cp311-cp311-manylinux_2_39_aarch64",
    )
    env = scan_environment(cross_env.env.venv)
    with pytest.raises(PlatformError) as info:
        prepare(env, Target("linux/arm64", (3, 11), Libc("glibc", (2, 36)), env.prefix))
    message = str(info.value)
    assert "no wheel for linux/arm64 (CPython 3.11, glibc 2.36) of " in message
    assert "slowpkg==2.0" in message
    assert "rarepkg==2.0" in message
    assert "fastpkg" not in message
    assert "PIP_FIND_LINKS" in message
    assert "image=" in message


def test_a_local_package_with_compiled_code_is_refused(cross_env: CrossEnv, tmp_path: Path) -> None:
    project = make_editable_project(tmp_path / "native", "nativepkg", "X = 1\n")
    (project / "src/nativepkg/_core.cpython-311-x86_64-linux-gnu.so").write_text("built here")
    pip_install(cross_env.env.venv, "-e", str(project))
    env = scan_environment(cross_env.env.venv)
    with pytest.raises(PlatformError) as info:
        prepare(env, Target("linux/arm64", (3, 11), Libc("glibc", (2, 36)), env.prefix))
    message = str(info.value)
    assert "cannot build the image for linux/arm64 on this linux/amd64 machine" in message
    assert f"nativepkg (editable install of {project})" in message
    assert "src/nativepkg/_core.cpython-311-x86_64-linux-gnu.so" in message
    assert "publish a wheel of nativepkg for linux/arm64" in message
    assert "image=" in message


# --- images in the registry ------------------------------------------------------------------


@dataclass(frozen=True)
class ArmBase:
    single: str
    """A linux/arm64 manifest (the amd64 test base, relabelled)."""
    index: str
    """An index: linux/amd64 → the test base, linux/arm64 → ``single``."""
    layers: frozenset[str]


@pytest.fixture(scope="session")
def arm_base(oci_registry: RegistryServer, base_image: BaseImage) -> ArmBase:
    _, repo, tag = split_reference(base_image.remote)
    with Registry(oci_registry.host) as registry:
        manifest, media_type, amd_digest = registry.get_manifest(repo, tag)
        config = registry.get_json_blob(repo, manifest["config"]["digest"])
        config.update(architecture="arm64", variant="v8")
        body = json.dumps(config).encode()
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        registry.upload_blob(repo, digest, len(body), lambda: body)
        relabelled = dict(manifest, config=dict(manifest["config"], digest=digest, size=len(body)))
        arm_body = json.dumps(relabelled).encode()
        arm_digest = registry.put_manifest(repo, "py3.11-arm64", arm_body, media_type)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": media_type,
                    "digest": amd_digest,
                    "size": len(json.dumps(manifest)),
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {
                    "mediaType": media_type,
                    "digest": arm_digest,
                    "size": len(arm_body),
                    "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                },
            ],
        }
        registry.put_manifest(repo, "py3.11-multi", json.dumps(index).encode(), OCI_INDEX)
    layers = frozenset(layer["digest"] for layer in manifest["layers"])
    return ArmBase(
        f"{oci_registry.host}/{repo}:py3.11-arm64",
        f"{oci_registry.host}/{repo}:py3.11-multi",
        layers,
    )


def image_files(host: str, ref: ImageRef, skip: frozenset[str]) -> dict[str, bytes]:
    """Path → content of every file in the image's layers but those in ``skip``."""
    _, repo, _ = split_reference(ref.reference)
    files: dict[str, bytes] = {}
    with Registry(host) as registry:
        manifest, _, _ = registry.get_manifest(repo, ref.digest)
        for layer in manifest["layers"]:
            if layer["digest"] in skip:
                continue
            with registry.get_blob(repo, layer["digest"]) as response:
                data = response.content
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    f = tar.extractfile(member) if member.isfile() else None
                    files[member.name] = f.read() if f is not None else b""
    return files


PROBE = """
import json, os, subprocess, sys
import tinypkg, localpkg, fastpkg
script = subprocess.run(["fast-cli"], capture_output=True, text=True, check=True).stdout
print(json.dumps({
    "value": tinypkg.VALUE,
    "hello": localpkg.hello(),
    "arch": fastpkg.ARCH,
    "pth": os.environ.get("FASTPKG_PTH"),
    "script": script.strip(),
}))
"""


def _build(cross: CrossEnv, registry: RegistryServer, base: str, **kw: Any) -> ImageRef:
    return build_image(registry.host, base_image=base, prefix=cross.env.venv, **kw)


@pytest.mark.podman
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_image_for_arm64_built_here(
    cross_env: CrossEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    arm_base: ArmBase,
) -> None:
    venv = str(cross_env.env.venv).lstrip("/")
    ref = _build(cross_env, oci_registry, arm_base.index, platform="linux/arm64", repository="x")
    assert ref.built and ref.platform == "linux/arm64"
    assert "(for linux/arm64; " in ref.summary()
    files = image_files(oci_registry.host, ref, arm_base.layers)
    assert f"{venv}/{SITE}/{TARGET_SO}" in files  # installed for the target
    assert f"{venv}/{SITE}/{LOCAL_SO}" not in files  # not copied from here
    assert f"{venv}/{SITE}/tinypkg/util.py" in files  # pure-Python: copied
    assert f"{cross_env.env.project.as_posix().lstrip('/')}/src/localpkg/__init__.py" in files
    assert files[f"{venv}/bin/fast-cli"].startswith(f"#!/{venv}/bin/python".encode())
    with Registry(oci_registry.host) as registry:
        _, repo, _ = split_reference(ref.reference)
        manifest, _, _ = registry.get_manifest(repo, ref.digest)
        config = registry.get_json_blob(repo, manifest["config"]["digest"])
    assert (config["architecture"], config.get("variant")) == ("arm64", "v8")

    # The relabelled base runs here: the packages, the .pth and the console script work.
    result = podman_service.cli(
        "run", "--rm", "--network", "host", ref.reference, "python", "-c", PROBE, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "value": 42,
        "hello": "hello from localpkg",
        "arch": "aarch64",
        "pth": "aarch64",
        "script": "fast-cli on aarch64",
    }

    # An edit of the editable package: pip is not run again (its wheelhouse is empty now),
    # and only the layer of local code is pushed.
    for wheel in cross_env.wheelhouse.iterdir():
        wheel.unlink()
    source = cross_env.env.project / "src/localpkg/__init__.py"
    source.write_text(source.read_text() + "EDITED = True\n")
    again = _build(cross_env, oci_registry, arm_base.index, platform="linux/arm64", repository="x")
    assert again.built and again.fingerprint != ref.fingerprint
    assert again.layers_pushed == 1


@pytest.mark.podman
def test_fingerprint_and_tag_depend_on_the_platform(
    cross_env: CrossEnv, oci_registry: RegistryServer, base_image: BaseImage, arm_base: ArmBase
) -> None:
    env = scan_environment(cross_env.env.venv)
    base = "sha256:" + "0" * 64
    amd = fingerprint(env, base_digest=base, platform="cross/linux/amd64")
    arm = fingerprint(env, base_digest=base, platform="cross/linux/arm64")
    assert len({amd, arm, fingerprint(env, base_digest=base)}) == 3
    # Through the builder, with the index as base: each platform gets its own image.
    on_amd = _build(cross_env, oci_registry, arm_base.index, repository="fp", compression="none")
    on_arm = _build(
        cross_env,
        oci_registry,
        arm_base.index,
        repository="fp",
        compression="none",
        platform="linux/arm64",
    )
    assert on_amd.platform == "linux/amd64"
    assert on_amd.fingerprint != on_arm.fingerprint
    assert on_amd.digest != on_arm.digest


@pytest.mark.podman
def test_same_platform_builds_as_before(
    cross_env: CrossEnv, oci_registry: RegistryServer, base_image: BaseImage
) -> None:
    # platform= the local platform is exactly the build without it: local files copied
    # (the x86_64 module included), the fingerprint computed as it always was.
    default = _build(cross_env, oci_registry, base_image.remote, repository="same")
    explicit = _build(
        cross_env, oci_registry, base_image.remote, repository="same", platform="linux/amd64"
    )
    assert not explicit.built
    assert explicit.digest == default.digest
    assert "for linux" not in default.summary()
    _, repo, tag = split_reference(base_image.remote)
    with Registry(oci_registry.host) as registry:
        base_digest = registry.manifest_digest(repo, tag)
    assert base_digest is not None
    env = scan_environment(cross_env.env.venv)
    assert default.fingerprint == fingerprint(env, base_digest=base_digest)
    venv = str(cross_env.env.venv).lstrip("/")
    files = image_files(oci_registry.host, default, frozenset())
    assert f"{venv}/{SITE}/{LOCAL_SO}" in files


@pytest.mark.podman
def test_a_base_image_for_another_platform_is_refused(
    cross_env: CrossEnv, oci_registry: RegistryServer, base_image: BaseImage, arm_base: ArmBase
) -> None:
    with pytest.raises(BaseImageError) as info:
        _build(cross_env, oci_registry, arm_base.single, repository="wrong")
    assert f"the base image {arm_base.single} is for linux/arm64" in str(info.value)
    assert "pass base_image= an image for linux/amd64" in str(info.value)
    with pytest.raises(BaseImageError, match="is for linux/amd64"):
        _build(cross_env, oci_registry, base_image.remote, platform="linux/arm64")
