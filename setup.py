"""Only for the one thing pyproject.toml cannot say: ship `sparsealign-lm-eval.pth` at the top of site-packages, in
wheels and in editable installs, so lm-eval's own `lm_eval` CLI finds the `sparsealign` model
(src/_sparsealign_lm_eval.py says how)."""

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "sparsealign-lm-eval.pth"
PTH_SOURCE = Path(__file__).resolve().parent / "src" / PTH


class BuildWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class _AlsoWritePth:
    """Wraps setuptools' editable strategy (which only puts src/ on sys.path) and adds the .pth beside it."""

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def __call__(self, wheel: Any, files: list[str], mapping: dict[str, str]) -> None:
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH, PTH_SOURCE.read_bytes())

    def __enter__(self) -> "_AlsoWritePth":
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.strategy.__exit__(*exc)


class EditableWithPth(editable_wheel):
    def _select_strategy(self, *args: Any, **kwargs: Any) -> Any:
        return _AlsoWritePth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": BuildWithPth, "editable_wheel": EditableWithPth})
