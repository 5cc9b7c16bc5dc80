"""One typed, validated config object per run, built from CLI flags (or a YAML candidate file) and stored with it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import KobenchError
from harness.paths import PACKAGE_DIR

SUITES_FILE = PACKAGE_DIR / "data" / "suites.yaml"
DEFAULT_SEED = 1234


def load_suites() -> dict[str, dict[str, Any]]:
    with open(SUITES_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@dataclass
class RunConfig:
    """Everything that decides what a run computes. Validated once by `validate()`."""

    model: str
    adapter: str | None = None
    tasks: list[str] = field(default_factory=list)
    suite: str | None = None
    limit: int | None = None
    hardware: str = "unspecified"
    quantize: str = "none"
    profiles: list[str] = field(default_factory=list)  # hardware-profile files (--profiles), besides KOBENCH_PROFILES
    db: str | None = None
    data: dict[str, str] = field(default_factory=dict)
    categories: list[str] = field(default_factory=list)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: str = "auto"
    decode: str = "auto"  # harness/fastgen.py: auto, graph, compiled or generate
    num_fewshot: int | None = None
    chat_template: str = "auto"
    force: bool = False
    online: bool = False
    trust_remote_code: bool = False
    seed: int = DEFAULT_SEED
    bootstrap_iters: int = 1000
    refined: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Check every flag that can be checked without loading a model; raise KobenchError on the first problem."""
        from harness.tasks import check_metrics, discover_tasks, get_task

        if self.limit is not None and self.limit < 1:
            raise KobenchError(f"--limit {self.limit}: must be a positive number of items per task (or omit it)")
        if self.batch_size != "auto":
            try:
                size = int(self.batch_size)
            except ValueError:
                size = 0
            if size < 1:
                raise KobenchError(f"--batch-size {self.batch_size}: must be a positive integer or 'auto'")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise KobenchError(f"--device {self.device}: use cpu, cuda, cuda:N or auto")
        if self.chat_template not in ("auto", "on", "off"):
            raise KobenchError(f"--chat-template {self.chat_template}: use auto, on or off")
        from harness.fastgen import DECODE_MODES

        if self.decode not in DECODE_MODES:
            raise KobenchError(f"--decode {self.decode}: use {', '.join(DECODE_MODES[:-1])} or {DECODE_MODES[-1]}")
        if self.quantize not in ("none", "auto", "int8", "nf4"):
            raise KobenchError(f"--quantize {self.quantize}: use none, auto, int8 or nf4")
        if self.hardware != "unspecified" or self.profiles:
            from harness.hardware import get_profile, load_profiles

            load_profiles(self.profiles)  # a bad profiles file is an error even before its profile is used
            if self.hardware != "unspecified":
                get_profile(self.hardware, self.profiles)
        if self.quantize == "auto" and self.hardware == "unspecified":
            raise KobenchError("--quantize auto: needs --hardware PROFILE to decide whether full precision fits; "
                               "pass a profile, or --quantize int8 / nf4 to quantize regardless")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise KobenchError(f"--num-fewshot {self.num_fewshot}: must be 0 or more")
        suites = load_suites()
        # A suite expands into its task list; validating again (e.g. `kobench screen` checks every candidate first,
        # then runs it) sees that list, which is not "--tasks and --suite both given".
        if self.suite and self.tasks and self.tasks != _suite_tasks(suites, self.suite):
            raise KobenchError("--tasks and --suite both given: pass one of them")
        if not self.tasks:
            self.suite = self.suite or "full"
            self.tasks = _suite_tasks(suites, self.suite)
            if not self.tasks:
                raise KobenchError("no tasks found under tasks/: check KOBENCH_TASKS_DIR")
        for name in self.tasks:
            check_metrics(get_task(name))
        for name, path in self.data.items():
            info = get_task(name)
            if name not in self.tasks:
                raise KobenchError(f"--data {name}={path}: task {name} is not part of this run; add it to --tasks")
            from harness.taskdata import read_records

            read_records(Path(path), info.data_format)  # raises DataError with file/line
        return self


def _suite_tasks(suites: dict[str, dict[str, Any]], suite: str) -> list[str]:
    from harness.tasks import discover_tasks

    if suite not in suites:
        raise KobenchError(f"--suite {suite}: unknown suite; known: {', '.join(suites)}")
    wanted = suites[suite].get("tasks", "all")
    return sorted(discover_tasks()) if wanted == "all" else list(wanted)


def parse_data_overrides(values: list[str]) -> dict[str, str]:
    """`--data TASK=PATH` flags into {task: absolute path}."""
    out: dict[str, str] = {}
    for value in values:
        task, sep, path = value.partition("=")
        if not sep or not task or not path:
            raise KobenchError(f"--data {value}: expected TASK=PATH, e.g. --data ko_dialogue_summary=my.csv")
        out[task.strip()] = str(Path(path).expanduser().resolve())
    return out
