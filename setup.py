"""Packages the data folders protocols/, drivers/ and sim/ into the wheel as cyclerctl/data/."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("protocols", "drivers", "sim")


class BuildWithData(build_py):
    def run(self):
        super().run()
        root = Path(__file__).parent
        for name in DATA_DIRS:
            src = root / name
            if not src.is_dir():
                continue
            for path in src.rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts:
                    dest = Path(self.build_lib) / "cyclerctl" / "data" / name / path.relative_to(src)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.copy_file(str(path), str(dest))


setup(cmdclass={"build_py": BuildWithData})
