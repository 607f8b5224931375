"""README's two commands are the ones CI and newcomers run: keep them parseable and true to the package."""

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def command(marker: str) -> str:
    block = re.search(rf"<!-- {marker} -->\s*```\s*\n(.+?)\n```\s*<!-- /{marker} -->", README, re.S)
    assert block, f"README.md has no {marker} block"
    return block.group(1).strip()


def test_test_command_installs_test_extras_and_runs_pytest():
    cmd = command("test-command")
    assert '".[test]"' in cmd and "--no-build-isolation" in cmd and cmd.endswith("python -m pytest -q")


def test_main_command_runs_the_demo():
    cmd = command("main-command")
    assert cmd.endswith("recsys-kernels demo")
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'recsys-kernels = "recsys_kernels.__main__:main"' in pyproject
