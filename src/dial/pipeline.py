"""The DIAL iterations as DVC stages (DIAL paper algorithm 1).

DVC has no `${previous}` inside a `foreach`, and the order of generated stages only follows from
their dependencies. So every per-simulator stage in `dvc.yaml` lists its items explicitly, each
iteration naming its predecessor (`it1: {previous: sft}`, `it2: {previous: it1}`, ...), and the
dependencies between them are real files (a simulator's adapter folder, its simulated sessions,
its discriminator).

`dial.iterations` (and `dial.zero_shot`) in `params.yaml` is the one place the simulators are set;
`dial pipeline` rewrites those item lists in `dvc.yaml` to match (comments and everything else
kept), and every iteration stage refuses to run when the two disagree (`check_iteration`).

Simulators, in order: zero-shot (the base model, prompted; a baseline, left out with
`dial.zero_shot: false`), sft, it1 ... itK. Iteration k takes
simulator k-1's sessions, trains discriminator k-1 on them, picks preference pairs with its
rewards and DPO-trains simulator k with simulator k-1 as the reference policy.
"""

from __future__ import annotations

from pathlib import Path

from dial.errors import DialError
from dial.paths import ZERO_SHOT

SFT = "sft"
ITERATION_PREFIX = "it"
# Stages with one item per simulator / per iteration (see dvc.yaml).
SIMULATOR_STAGES = ("simulate", "discriminator")
ITERATION_STAGES = ("pairs", "dpo")


def iteration_ids(iterations: int) -> list[str]:
    return [f"{ITERATION_PREFIX}{k}" for k in range(1, iterations + 1)]


def simulator_ids(iterations: int, zero_shot: bool = True) -> list[str]:
    """zero-shot (when `zero_shot`), sft, it1 ... itK: every simulator the pipeline simulates and
    discriminates."""
    return [*([ZERO_SHOT] if zero_shot else []), SFT, *iteration_ids(iterations)]


def previous_simulator(iteration_id: str) -> str:
    """The simulator iteration `itk` starts from (and uses as the DPO reference): sft for it1."""
    k = iteration_number(iteration_id)
    return SFT if k == 1 else f"{ITERATION_PREFIX}{k - 1}"


def iteration_number(iteration_id: str) -> int:
    number = iteration_id[len(ITERATION_PREFIX):] if iteration_id.startswith(ITERATION_PREFIX) else ""
    if not number.isdigit() or int(number) < 1:
        raise DialError(f"{iteration_id!r} is not a DIAL iteration (expected it1, it2, ...)")
    return int(number)


def check_iteration(iteration_id: str, iterations: int) -> None:
    """Refuse to run an iteration stage that `dial.iterations` does not ask for."""
    if iteration_number(iteration_id) > iterations:
        raise DialError(
            f"dvc.yaml has a stage for {iteration_id} but params.yaml sets dial.iterations={iterations}: "
            "run `dial pipeline` to rewrite the iteration stages of dvc.yaml, then `dvc repro`"
        )


def check_dvc_yaml(dvc_yaml: Path, iterations: int, zero_shot: bool) -> None:
    """Refuse to evaluate simulators that dvc.yaml has no stages for (or to skip ones it has), e.g.
    after `dvc exp run -S dial.iterations=3` without `dial pipeline`."""
    listed = list(stage_items(dvc_yaml)["simulate"])
    wanted = simulator_ids(iterations, zero_shot)
    if listed != wanted:
        raise DialError(
            f"{dvc_yaml} has simulate stages for {', '.join(listed)} but params.yaml (dial.iterations={iterations}, "
            f"dial.zero_shot={str(zero_shot).lower()}) asks for {', '.join(wanted)}: run `dial pipeline` "
            "(or `dial overrides FILE --write`), then `dvc repro`"
        )


def model_dep(simulator_id: str) -> str:
    """The folder a simulator's stages depend on: its adapter, or the base model for zero-shot."""
    return "models/base" if simulator_id == ZERO_SHOT else f"models/simulator/{simulator_id}"


def foreach_items(iterations: int, zero_shot: bool = True) -> dict[str, dict]:
    """The `foreach:` items of each generated stage for `iterations` DIAL iterations (and the
    zero-shot baseline when `zero_shot`)."""
    simulators = {simulator: {"model": model_dep(simulator)} for simulator in simulator_ids(iterations, zero_shot)}
    chain = {iteration: {"previous": previous_simulator(iteration)} for iteration in iteration_ids(iterations)}
    return {
        **{stage: simulators for stage in SIMULATOR_STAGES},
        **{stage: chain for stage in ITERATION_STAGES},
    }


def _yaml():
    from ruamel.yaml import YAML  # DVC's own YAML library: a round trip keeps comments and layout

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def stage_items(dvc_yaml: Path) -> dict[str, dict]:
    """The current `foreach:` items of the generated stages in `dvc_yaml` (plain dicts)."""
    document = _yaml().load(Path(dvc_yaml).read_text(encoding="utf-8"))
    stages = document.get("stages", {})
    found = {}
    for name in (*SIMULATOR_STAGES, *ITERATION_STAGES):
        if name not in stages or "foreach" not in stages[name]:
            raise DialError(f"{dvc_yaml}: stage {name!r} with a `foreach:` is missing")
        found[name] = {key: dict(value) for key, value in stages[name]["foreach"].items()}
    return found


def sync_dvc_yaml(dvc_yaml: Path, iterations: int, zero_shot: bool = True) -> bool:
    """Rewrite the `foreach:` items of the generated stages for `iterations` (and the zero-shot
    baseline when `zero_shot`); True if it changed."""
    from io import StringIO

    from ruamel.yaml.comments import CommentedMap

    from dial.io import write_text_atomic

    if iterations < 0:
        raise DialError(f"dial.iterations must be >= 0 (got {iterations})")
    dvc_yaml = Path(dvc_yaml)
    wanted = foreach_items(iterations, zero_shot)
    if stage_items(dvc_yaml) == wanted:
        return False
    yaml = _yaml()
    document = yaml.load(dvc_yaml.read_text(encoding="utf-8"))
    for name, items in wanted.items():
        foreach = CommentedMap()
        for key, value in items.items():
            item = CommentedMap(value)
            item.fa.set_flow_style()
            foreach[key] = item
        document["stages"][name]["foreach"] = foreach
    buffer = StringIO()
    yaml.dump(document, buffer)
    write_text_atomic(dvc_yaml, buffer.getvalue())
    return True
