"""Build posenc with its CMake build (the single source of truth) and package the results.

setup.py only drives CMake: the same build directory serves `pip install` and ctest, so the
tests exercise the very binaries that `import posenc` loads. Build against the torch that is
already installed: `pip install --no-build-isolation .` (or `-e .`).

The package carries what a C++ project needs to link the installed posenc: the public headers
(posenc/include), libposenc.so and a CMake package config (posenc/share/cmake/posenc, found
through posenc.cmake_prefix_path).

Environment:
  POSENC_BUILD_DIR     CMake build directory (default: build/cmake)
  POSENC_WITH_CUDA     0 to skip the CUDA kernels even with a CUDA torch and nvcc
  POSENC_BUILD_TESTS   1 to also build the GoogleTest suite (needs GoogleTest; default 0)
  TORCH_CUDA_ARCH_LIST CUDA architectures (default 9.0)
  MAX_JOBS             parallel compile jobs
  CCACHE_BASEDIR       ccache base directory (default: this checkout, so that every clone or
                       unpacked sdist hits the same cache entries)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = Path(os.environ.get("POSENC_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)

        def flag(name, default="1"):
            return "ON" if os.environ.get(name, default) not in ("0", "OFF", "off", "") else "OFF"

        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE', 'Release')}",
            f"-DPOSENC_WITH_CUDA={flag('POSENC_WITH_CUDA')}",
            f"-DPOSENC_BUILD_TESTS={flag('POSENC_BUILD_TESTS', '0')}",
            "-DPOSENC_BUILD_PYTHON=ON",
            "-DPOSENC_WHEEL_LAYOUT=ON",
        ]
        env = dict(os.environ)
        env.setdefault("CCACHE_BASEDIR", str(ROOT))
        env.setdefault("CCACHE_NOHASHDIR", "true")
        # Editable installs (pip install -e .) import from python/posenc: put the libraries
        # there, and let every later `cmake --build` (scripts/test.sh) refresh them.
        pkg_dir = ROOT / "python" / "posenc"
        editable = bool(getattr(self, "editable_mode", False) or self.inplace)
        args.append(f"-DPOSENC_PYTHON_PACKAGE_DIR={pkg_dir if editable else ''}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.check_call(args, env=env)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--parallel", jobs], env=env)

        # Editable: the build's posenc_python_package target has already installed into pkg_dir.
        targets = {out_dir} - {pkg_dir} if editable else {out_dir}
        for target in targets:
            # libposenc.so (install RPATH), include/ and share/cmake/posenc.
            subprocess.check_call(["cmake", "--install", str(build_dir), "--prefix", str(target)],
                                  env=env, stdout=subprocess.DEVNULL)
            for lib in build_dir.glob("_C*.so"):
                shutil.copy2(lib, target / lib.name)


setup(
    ext_modules=[CMakeExtension("posenc._C")],
    cmdclass={"build_ext": CMakeBuild},
)
