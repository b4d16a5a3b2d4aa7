"""Build posenc with its CMake build (the single source of truth) and package the results.

setup.py only drives CMake: the same build directory serves `pip install` and ctest, so the
tests exercise the very binaries that `import posenc` loads. Build against the torch that is
already installed: `pip install --no-build-isolation .` (or `-e .`).

Environment:
  POSENC_BUILD_DIR     CMake build directory (default: build/cmake)
  POSENC_WITH_CUDA     0 to skip the CUDA kernels even with a CUDA torch and nvcc
  POSENC_BUILD_TESTS   0 to skip the GoogleTest suite
  TORCH_CUDA_ARCH_LIST CUDA architectures (default 9.0)
  MAX_JOBS             parallel compile jobs
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
            f"-DPOSENC_BUILD_TESTS={flag('POSENC_BUILD_TESTS')}",
            "-DPOSENC_BUILD_PYTHON=ON",
        ]
        # In an editable install the package directory is python/posenc: let every later
        # `cmake --build` (scripts/test.sh, ctest runs) refresh the libraries there too.
        pkg_dir = ROOT / "python" / "posenc"
        args.append(f"-DPOSENC_PYTHON_PACKAGE_DIR={pkg_dir if out_dir == pkg_dir else ''}")
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--parallel", jobs])

        for pattern in ("libposenc.so", "_C*.so"):
            for lib in build_dir.glob(pattern):
                shutil.copy2(lib, out_dir / lib.name)


setup(
    ext_modules=[CMakeExtension("posenc._C")],
    cmdclass={"build_ext": CMakeBuild},
)
