"""Builds mx._mx with the repository's CMake; the rest of the metadata is pyproject.toml.

MX_BUILD_DIR: an already configured build directory of this repository to build the
target in (a `make build` tree, or the Dockerfile's); otherwise a fresh one under
setuptools' build_temp, configured with the Makefile's flags."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build_dir = os.environ.get("MX_BUILD_DIR")
        if build_dir:
            build_dir = Path(build_dir).resolve()
        else:
            build_dir = Path(self.build_temp).resolve() / "cmake"
            build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / "build.ninja").exists():
            subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
                            "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DMX_PYTHON=ON",
                            f"-DPython3_EXECUTABLE={sys.executable}"], check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs, "--target", "_mx"],
                       check=True)
        built = sorted((build_dir / "python" / "pkg" / "mx").glob("_mx*.so"))
        if not built:
            raise RuntimeError(f"cmake built no mx/_mx*.so under {build_dir}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[0], dest)
        if shutil.which("strip"):  # RelWithDebInfo: the debug info is most of the size
            subprocess.run(["strip", "--strip-debug", str(dest)], check=True)


setup(ext_modules=[Extension("mx._mx", sources=[])], cmdclass={"build_ext": CMakeBuild})
