"""The pull-request workflow of docs/gating.md, its commands run in a scratch repository: a base
branch and a pull request, tiny CPU points, and a job summary file as GitHub Actions gives one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
# the workflow's points, made small: one tiny AR point, one pair (too few for the paired test)
SMALL = {"PAIRS": "1", "POINTS": "--dlm-paradigms=ar --dlm-prompt=16 --dlm-gen=32 --dlm-batch=1 --dlm-rounds=2 "
                                  "--dlm-device=cpu"}


def workflow() -> dict:
    text = (ROOT / "docs" / "gating.md").read_text()
    block = text.split("<!-- workflow -->", 1)[1].split("<!-- end workflow -->", 1)[0]
    return yaml.safe_load(block.strip().removeprefix("```yaml").removesuffix("```"))


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_documented_workflow_gates_a_pull_request(tmp_path):
    job = workflow()["jobs"]["gate"]
    assert set(job["env"]) == set(SMALL)
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "benchmarks", repo / "benchmarks")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "add", ".")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-qm", "base")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")  # what checkout with fetch-depth 0 fetched
    (repo / "benchmarks" / "README").write_text("a pull request's change\n")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "add", ".")
    git(repo, "-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-qm", "pull request")
    summary = tmp_path / "summary.md"
    env = os.environ | SMALL | {"GITHUB_BASE_REF": "main", "GITHUB_STEP_SUMMARY": str(summary)}
    ran = []
    for step in job["steps"]:
        if "run" not in step or step["name"] == "Install":  # this environment has pytest-dlmbench installed
            continue
        done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        ran.append(step["name"])
    assert ran == ["Interleaved A/B against the base branch"]
    assert sorted(path.name for path in (repo / "ab").iterdir()) == ["A1.json", "A1.log", "B1.json", "B1.log",
                                                                     "ab.json"]
    markdown = summary.read_text()
    assert markdown.startswith("## dlmbench ab: `HEAD` against `origin/main`, 1 interleaved pairs (abba)")
    assert "ar-tiny-ar-p16-g32-b1] | tokens_per_s" in markdown and "over 1 pairs" in markdown, markdown
