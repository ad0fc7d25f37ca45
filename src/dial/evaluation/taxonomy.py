"""The annotation taxonomy the judges use: issue categories of chatbot messages and user actions of
user messages (METHOD.md §6; DIAL paper §4.3, appendices D and E). Shipped as `taxonomy.yaml` at the
repository root; users edit or replace it.

File format::

    version: 1
    issues:                      # issue groups (paper: User Distress, ..., App Bugs)
      - group: User Frustration
        description: ...         # optional
        categories:
          - name: Repetitive questions    # unique across the file: the output tables hold it
            definition: ...
            example: ...                  # optional
            source: paper                 # optional: paper | added (provenance)
            detector: repetitive_question # optional: a rules-judge detector, or a list of them
    user_actions:                # action groups (paper: Good, Bad, user features)
      - group: Good
        actions: [ {name, definition, example, source, detector}, ... ]

Unknown keys are errors (a typo must not silently drop a definition). Every error names the file
and the key, e.g. ``taxonomy.yaml: issues[1] (User Confusion).categories[0].definition: Field
required``. Whether detector names exist is checked by the rules judge (`check_detectors`), which
owns the detectors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dial.errors import DialError

TAXONOMY_VERSION = 1


class TaxonomyError(DialError):
    """The taxonomy file is missing or invalid; the message names the file and the key."""


# --------------------------------------------------------------------------------------------
# Typed objects (what the judges use)


@dataclass(frozen=True)
class Label:
    """An issue category or a user action."""

    name: str
    group: str
    definition: str
    example: str
    source: str  # provenance: "paper", "added" or "" (not stated)
    detectors: tuple[str, ...]  # rules-judge detectors that emit this label (may be empty)


@dataclass(frozen=True)
class LabelGroup:
    name: str
    description: str
    labels: tuple[Label, ...]


@dataclass(frozen=True)
class Taxonomy:
    path: str  # where it was read from (for error messages)
    version: int
    issue_groups: tuple[LabelGroup, ...]
    action_groups: tuple[LabelGroup, ...]

    @property
    def categories(self) -> tuple[Label, ...]:
        return tuple(label for group in self.issue_groups for label in group.labels)

    @property
    def actions(self) -> tuple[Label, ...]:
        return tuple(label for group in self.action_groups for label in group.labels)

    def category(self, name: str) -> Label | None:
        """The issue category called `name` (case and surrounding space ignored), or None."""
        return _by_folded_name(self.categories).get(_fold(name))

    def action(self, name: str) -> Label | None:
        """The user action called `name` (case and surrounding space ignored), or None."""
        return _by_folded_name(self.actions).get(_fold(name))

    def fingerprint(self) -> str:
        """sha256 of the content (not the path): judges key their caches on it."""
        payload = {
            "version": self.version,
            "issues": [_group_json(group) for group in self.issue_groups],
            "user_actions": [_group_json(group) for group in self.action_groups],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def check_detectors(self, issue_detectors: Iterable[str], action_detectors: Iterable[str]) -> None:
        """Every detector named in the file exists, and no detector serves two labels (its hits would
        be counted twice). Raises `TaxonomyError` naming the file, the label and the detector."""
        for kind, labels, known in (
            ("issue category", self.categories, set(issue_detectors)),
            ("user action", self.actions, set(action_detectors)),
        ):
            owner: dict[str, str] = {}
            for label in labels:
                for detector in label.detectors:
                    if detector not in known:
                        raise TaxonomyError(
                            f"{self.path}: {kind} {label.name!r}: unknown detector {detector!r} "
                            f"(known {kind} detectors: {', '.join(sorted(known))})"
                        )
                    if detector in owner:
                        raise TaxonomyError(
                            f"{self.path}: {kind} {label.name!r}: detector {detector!r} is already used by "
                            f"{owner[detector]!r} (a detector can serve one label only)"
                        )
                    owner[detector] = label.name


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


def _by_folded_name(labels: tuple[Label, ...]) -> dict[str, Label]:
    return {_fold(label.name): label for label in labels}


def _group_json(group: LabelGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "description": group.description,
        "labels": [
            {"name": l.name, "definition": l.definition, "example": l.example, "source": l.source, "detectors": list(l.detectors)}
            for l in group.labels
        ],
    }


# --------------------------------------------------------------------------------------------
# File format (validation)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1)
    definition: str = Field(min_length=1)
    example: str = ""
    source: Literal["paper", "added", ""] = ""
    detector: str | list[str] | None = None

    @field_validator("detector")
    @classmethod
    def _detector_names(cls, value: str | list[str] | None) -> str | list[str] | None:
        names = [value] if isinstance(value, str) else (value or [])
        if any(not name.strip() for name in names):
            raise ValueError("detector names must be non-empty")
        return value

    def detectors(self) -> tuple[str, ...]:
        if self.detector is None:
            return ()
        return (self.detector,) if isinstance(self.detector, str) else tuple(self.detector)


class _IssueGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    group: str = Field(min_length=1)
    description: str = ""
    categories: list[_Entry] = Field(min_length=1)


class _ActionGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    group: str = Field(min_length=1)
    description: str = ""
    actions: list[_Entry] = Field(min_length=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    issues: list[_IssueGroup] = Field(min_length=1)
    user_actions: list[_ActionGroup] = Field(min_length=1)


def _key_path(loc: tuple[Any, ...], raw: Any) -> str:
    """`('issues', 1, 'categories', 0, 'definition')` → `issues[1] (User Confusion).categories[0] (Name).definition`,
    naming groups and entries where the raw data has a name."""
    out, node = "", raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict):
                label = node.get("group", node.get("name"))
                if isinstance(label, str) and label.strip():
                    out += f" ({label.strip()})"
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _check_unique(path: Path, kind: str, groups: list[tuple[str, list[_Entry]]], key: str, entries_key: str) -> None:
    seen_groups: dict[str, int] = {}
    seen_names: dict[str, str] = {}
    for g, (group, entries) in enumerate(groups):
        if _fold(group) in seen_groups:
            raise TaxonomyError(f"{path}: {key}[{g}].group: duplicate group {group!r} (also {key}[{seen_groups[_fold(group)]}])")
        seen_groups[_fold(group)] = g
        for e, entry in enumerate(entries):
            where = f"{key}[{g}] ({group}).{entries_key}[{e}].name"
            if _fold(entry.name) in seen_names:
                raise TaxonomyError(f"{path}: {where}: duplicate {kind} {entry.name!r} (also at {seen_names[_fold(entry.name)]})")
            seen_names[_fold(entry.name)] = where


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and validate a taxonomy file (see the module docstring). Raises `TaxonomyError`."""
    path = Path(path)
    if not path.is_file():
        raise TaxonomyError(f"{path}: taxonomy file not found (set judge.taxonomy to an existing YAML file)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise TaxonomyError(f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    except UnicodeDecodeError as exc:
        raise TaxonomyError(f"{path}: not UTF-8 text ({exc})") from None
    if not isinstance(raw, dict):
        raise TaxonomyError(f"{path}: expected a mapping with keys version, issues, user_actions (got {type(raw).__name__})")
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more error(s))" if exc.error_count() > 1 else ""
        raise TaxonomyError(f"{path}: {_key_path(first['loc'], raw)}: {first['msg']}{more}") from None

    _check_unique(path, "issue category", [(g.group, g.categories) for g in parsed.issues], "issues", "categories")
    _check_unique(path, "user action", [(g.group, g.actions) for g in parsed.user_actions], "user_actions", "actions")

    def groups(items: list, entries_attr: str) -> tuple[LabelGroup, ...]:
        return tuple(
            LabelGroup(
                name=group.group,
                description=group.description,
                labels=tuple(
                    Label(name=e.name, group=group.group, definition=e.definition, example=e.example,
                          source=e.source, detectors=e.detectors())
                    for e in getattr(group, entries_attr)
                ),
            )
            for group in items
        )

    return Taxonomy(
        path=str(path),
        version=parsed.version,
        issue_groups=groups(parsed.issues, "categories"),
        action_groups=groups(parsed.user_actions, "actions"),
    )
