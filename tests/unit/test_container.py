"""The Dockerfile cannot be built here: check that it installs the way CI does and keeps its promises."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from loader.cache import LISTPACK_SETTINGS

REPO = Path(__file__).resolve().parents[2]
INSTALL_DEPS = "scripts/install-python-deps"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [argument for word, argument in self.instructions if word == keyword]


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """The ARG defaults before the first FROM, and each stage's instructions (continuations joined)."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(
        r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in filter(None, (line.strip() for line in logical.splitlines())):
        keyword, _, argument = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = argument.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 else ""))
        elif not stages and keyword == "ARG":
            name, _, default = argument.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, argument))
    return args, stages


def test_the_image_is_multi_stage_and_the_build_stage_installs_with_the_ci_script() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert any(run.startswith(f"{INSTALL_DEPS} /opt/venv") for run in build.arguments("RUN"))
    assert f"--from={build.name} /opt/venv /opt/venv" in final.arguments("COPY")


def test_scripts_install_runs_the_same_dependency_install() -> None:
    install = (REPO / "scripts" / "install").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(INSTALL_DEPS)} \.venv dev$", install, re.MULTILINE)
    assert (REPO / INSTALL_DEPS).stat().st_mode & 0o111, "the script must be executable"


def test_the_final_stage_has_no_build_tools_runs_as_a_user_and_checks_health() -> None:
    _, stages = dockerfile_stages()
    final = stages[-1]
    runs = " ".join(final.arguments("RUN"))
    assert "apt-get install" not in runs and "pip install" not in runs
    user = final.arguments("USER")
    assert user and user[-1] not in ("root", "0")
    env = " ".join(final.arguments("ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    healthcheck = final.arguments("HEALTHCHECK")
    assert len(healthcheck) == 1
    command = json.loads(healthcheck[0].partition("CMD")[2])  # the exec form is a JSON array
    assert command[:2] == ["gatekeeper", "health"]


def test_the_base_image_has_a_python_the_project_accepts() -> None:
    _, stages = dockerfile_stages()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    minimum = tuple(int(part) for part in requires.removeprefix(">=").split("."))
    for stage in stages:
        version = re.match(r"python:(\d+)\.(\d+)", stage.base)
        assert version, stage.base
        assert (int(version.group(1)), int(version.group(2))) >= minimum
    assert len({stage.base for stage in stages}) == 1, "the venv is copied between stages: same interpreter"


def test_everything_the_dockerfile_copies_exists() -> None:
    _, stages = dockerfile_stages()
    for stage in stages:
        for argument in stage.arguments("COPY"):
            if argument.startswith("--from="):
                continue
            *sources, _ = argument.split()
            for source in sources:
                assert (REPO / source).exists(), source


def test_compose_gives_redis_the_listpack_settings_of_the_cache_layout() -> None:
    compose = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    for name, setting in LISTPACK_SETTINGS.items():
        assert re.search(rf"--{name}\s*\n\s*- \"{setting}\"", compose), name
    for service in ("redis:", "postgres:", "migrate:", "loader:", "gatekeeper:"):
        assert f"\n  {service}" in compose


def test_compose_keeps_the_decision_record_on_a_volume_and_migrates_it_before_serving() -> None:
    compose = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    assert "decision-record:/var/lib/postgresql/data" in compose
    assert '["gatekeeper", "audit", "migrate"]' in compose
    gatekeeper = compose[compose.index("\n  gatekeeper:") :]
    assert "DATABASE_URL: postgresql://postgres@postgres:5432/gatekeeper" in gatekeeper
    assert re.search(r"migrate:\s*\n\s*condition: service_completed_successfully", gatekeeper)
