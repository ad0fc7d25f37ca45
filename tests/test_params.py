from pathlib import Path

import pytest

from dial.params import Params, ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid_and_matches_the_documented_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.context.max_tokens == 15000
    assert params.data.source == "chitchat" and params.data.on_bad_rows == "quarantine"
    assert Params().data.on_bad_rows == "fail"  # strict unless a configuration says otherwise
    assert "DATE_TIME" not in params.pii.entities and "PERSON" in params.pii.entities


def test_unknown_and_invalid_keys_name_the_file_and_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  sorce: chitchat\ncontext:\n  max_tokens: -1\n")
    with pytest.raises(ParamsError) as error:
        load_params(bad)
    message = str(error.value)
    assert str(bad) in message and "data.sorce" in message and "context.max_tokens" in message


def test_file_sources_need_a_path():
    with pytest.raises(ValueError, match="data.path is required"):
        Params.model_validate({"data": {"source": "canonical"}})


def test_alternatives_sample_with_the_simulators_decoding_unless_pairs_sets_its_own():
    simulate = {"decoding": {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 77}}
    params = Params.model_validate({"simulate": simulate})
    assert params.pairs.decoding == params.simulate.decoding
    assert Params().pairs.decoding == Params().simulate.decoding
    own = Params.model_validate({"simulate": simulate, "pairs": {"decoding": {"max_new_tokens": 12}}})
    assert own.pairs.decoding.max_new_tokens == 12
    assert load_params(REPO / "params.yaml").pairs.decoding == load_params(REPO / "params.yaml").simulate.decoding


def test_max_sentences_is_only_for_local_chatbots():
    chatbot = {"name": "remote", "backend": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m",
               "decoding": {"max_sentences": 1}}
    with pytest.raises(ValueError, match="max_sentences"):
        Params.model_validate({"chatbots": [chatbot]})
