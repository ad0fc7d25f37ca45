"""The shipped taxonomy and the validation of user-edited ones (errors name the file and the key)."""

from pathlib import Path

import pytest
import yaml

from dial.evaluation.judges.rules import ACTION_DETECTORS, ISSUE_DETECTORS, OFF_BY_DEFAULT
from dial.evaluation.taxonomy import TaxonomyError, load_taxonomy

PAPER_ISSUE_GROUPS = ["User Distress", "User Confusion", "User Frustration", "User Losing Trust",
                      "Chatbot Violates Policies", "App Bugs"]
# Every category and action the DIAL paper names (appendices D, E and section B).
PAPER_CATEGORIES = [
    "Invalidating or dismissive framing", "Unempathetic responses", "Premature wrap-up", "Chatbot hallucinates",
    "Unclear or confusing wording", "Chatbot contradicts itself", "Circular conversations",
    "Ignoring user's request to end session", "Repetitive questions", "Chatbot gives bad advice",
    "Chatbot is sycophantic", "Failure to follow crisis protocol", "Providing medical diagnoses",
    "Inappropriate self-disclosure", "Incomplete message", "Duplicate chatbot messages", "Chatbot forgets in context",
]
PAPER_ACTIONS = [
    "Gained an insight", "Change talk", "Agrees with chatbot", "Chatbot created change", "Disagrees with chatbot",
    "Asks for clarity", "Aggressive to chatbot", "Chatbot loses user", "General distress", "Negative affect",
    "Positive affect",
]


@pytest.fixture(scope="module")
def shipped(repo_root):
    return load_taxonomy(repo_root / "taxonomy.yaml")


def test_shipped_taxonomy_is_the_papers(shipped):
    assert [g.name for g in shipped.issue_groups] == PAPER_ISSUE_GROUPS
    assert len(shipped.categories) >= 35  # "35+ categories in six groups"
    assert len(shipped.actions) >= 20  # "20+ categories"
    assert [g.name for g in shipped.action_groups][:3] == ["Good", "Bad", "User features"]
    paper_named = {label.name for label in shipped.categories + shipped.actions if label.source == "paper"}
    assert paper_named == set(PAPER_CATEGORIES) | set(PAPER_ACTIONS)
    assert all(label.definition for label in shipped.categories + shipped.actions)
    shipped.check_detectors(ISSUE_DETECTORS, ACTION_DETECTORS)
    # every detector the rules judge has is used by the shipped taxonomy, except those switched off
    # by default for low measured precision (docs/judges.md)
    used = {d for label in shipped.categories for d in label.detectors}
    assert used | OFF_BY_DEFAULT == set(ISSUE_DETECTORS) and not used & OFF_BY_DEFAULT
    assert {d for label in shipped.actions for d in label.detectors} == set(ACTION_DETECTORS)


def test_lookup_ignores_case_and_spacing(shipped):
    assert shipped.category("  repetitive   QUESTIONS ").name == "Repetitive questions"
    assert shipped.category("Repetitive questions").group == "User Frustration"
    assert shipped.action("asks for clarity").group == "Bad"
    assert shipped.category("Asks for clarity") is None  # an action, not a category
    assert shipped.action("nonsense") is None


def test_fingerprint_depends_on_content_not_path(shipped, tmp_path, repo_root):
    copy = tmp_path / "copy.yaml"
    copy.write_text((repo_root / "taxonomy.yaml").read_text())
    assert load_taxonomy(copy).fingerprint() == shipped.fingerprint()
    copy.write_text((repo_root / "taxonomy.yaml").read_text().replace("The chatbot sends the same message twice", "Twice."))
    assert load_taxonomy(copy).fingerprint() != shipped.fingerprint()


def minimal() -> dict:
    return {
        "version": 1,
        "issues": [{"group": "App Bugs", "categories": [
            {"name": "Incomplete message", "definition": "cut off", "detector": "incomplete_message"}]}],
        "user_actions": [{"group": "Bad", "actions": [
            {"name": "Asks for clarity", "definition": "asks", "detector": ["asks_for_clarity"]}]}],
    }


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "tax.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def test_minimal_taxonomy_loads(tmp_path):
    taxonomy = load_taxonomy(write(tmp_path, minimal()))
    assert [c.name for c in taxonomy.categories] == ["Incomplete message"]
    assert taxonomy.actions[0].detectors == ("asks_for_clarity",)
    assert taxonomy.categories[0].example == "" and taxonomy.categories[0].source == ""


def _mutate(path, value):
    def apply(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return data
    return apply


_DELETE = object()


@pytest.mark.parametrize("mutation, fragment", [
    (_mutate(["issues", 0, "categories", 0, "definition"], _DELETE),
     "issues[0] (App Bugs).categories[0] (Incomplete message).definition: Field required"),
    (_mutate(["issues", 0, "categories", 0, "defintion"], "typo"),
     "issues[0] (App Bugs).categories[0] (Incomplete message).defintion: Extra inputs are not permitted"),
    (_mutate(["issues", 0, "categories", 0, "name"], "  "), "categories[0].name: String should have at least 1 character"),
    (_mutate(["issues", 0, "categories"], []), "issues[0] (App Bugs).categories: List should have at least 1 item"),
    (_mutate(["user_actions", 0, "actions", 0, "source"], "blog"), "user_actions[0] (Bad).actions[0] (Asks for clarity).source"),
    (_mutate(["user_actions", 0, "actions", 0, "detector"], [""]), "actions[0] (Asks for clarity).detector"),
    (_mutate(["version"], 2), "version: Input should be 1"),
    (_mutate(["user_actions"], _DELETE), "user_actions: Field required"),
    (_mutate(["colour"], "blue"), "colour: Extra inputs are not permitted"),
])
def test_invalid_files_name_the_file_and_the_key(tmp_path, mutation, fragment):
    path = write(tmp_path, mutation(minimal()))
    with pytest.raises(TaxonomyError) as caught:
        load_taxonomy(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)


def test_duplicate_names_and_groups_are_errors(tmp_path):
    data = minimal()
    data["issues"].append({"group": "User Distress", "categories": [{"name": "incomplete  MESSAGE", "definition": "x"}]})
    with pytest.raises(TaxonomyError, match=r"issues\[1\] \(User Distress\)\.categories\[0\]\.name: duplicate issue category "
                                            r"'incomplete  MESSAGE' \(also at issues\[0\] \(App Bugs\)\.categories\[0\]\.name\)"):
        load_taxonomy(write(tmp_path, data))
    data = minimal()
    data["user_actions"].append({"group": "bad", "actions": [{"name": "Other", "definition": "x"}]})
    with pytest.raises(TaxonomyError, match=r"user_actions\[1\]\.group: duplicate group 'bad'"):
        load_taxonomy(write(tmp_path, data))


def test_unreadable_files(tmp_path):
    with pytest.raises(TaxonomyError, match="taxonomy file not found"):
        load_taxonomy(tmp_path / "missing.yaml")
    with pytest.raises(TaxonomyError, match=r"tax.yaml: line 3, column 1: not valid YAML"):
        load_taxonomy(write(tmp_path, "version: 1\nissues: [unclosed\n"))
    with pytest.raises(TaxonomyError, match="expected a mapping"):
        load_taxonomy(write(tmp_path, "- just a list\n"))


def test_detector_names_are_checked(tmp_path):
    data = minimal()
    data["issues"][0]["categories"][0]["detector"] = "incomplete_mesage"
    taxonomy = load_taxonomy(write(tmp_path, data))
    with pytest.raises(TaxonomyError, match=r"tax.yaml: issue category 'Incomplete message': unknown detector 'incomplete_mesage'"):
        taxonomy.check_detectors(ISSUE_DETECTORS, ACTION_DETECTORS)
    data = minimal()
    data["issues"][0]["categories"].append({"name": "Other", "definition": "x", "detector": "incomplete_message"})
    taxonomy = load_taxonomy(write(tmp_path, data))
    with pytest.raises(TaxonomyError, match="detector 'incomplete_message' is already used by 'Incomplete message'"):
        taxonomy.check_detectors(ISSUE_DETECTORS, ACTION_DETECTORS)
    data = minimal()  # an action detector is not an issue detector
    data["issues"][0]["categories"][0]["detector"] = "asks_for_clarity"
    with pytest.raises(TaxonomyError, match="unknown detector 'asks_for_clarity'"):
        load_taxonomy(write(tmp_path, data)).check_detectors(ISSUE_DETECTORS, ACTION_DETECTORS)
