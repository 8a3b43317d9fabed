"""Push copy templates: undefined variables, missing values, per-row errors (render.py)."""

from __future__ import annotations

import pytest

from sender.render import FCM_PAYLOAD_LIMIT, TemplateError, compile_copy

COLUMNS = ["user_id", "firstName", "top_target_shoe", "inventory_count"]


def copy(title="Hi {{ firstName }}", body="Get {{ top_target_shoe | default('your grail') }}", data=None):
    return compile_copy("campaign c step s", title, body, data or {}, COLUMNS)


def test_renders_row_values_and_data():
    rendered = copy(data={"deep_link": "app://{{ user_id }}"}).render(
        {"user_id": "u1", "firstName": "Ana", "top_target_shoe": "Dunk Low", "inventory_count": "4"}
    )
    assert (rendered.title, rendered.body, rendered.data, rendered.error) == (
        "Hi Ana",
        "Get Dunk Low",
        {"deep_link": "app://u1"},
        None,
    )


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_value_is_empty_and_counts_as_missing_for_default(missing):
    rendered = copy().render({"firstName": missing, "top_target_shoe": missing})
    assert rendered.title == "Hi"
    assert rendered.body == "Get your grail"


def test_undefined_variable_is_an_error_before_sending():
    with pytest.raises(TemplateError, match=r"campaign c step s body: undefined variable shoe_size \(columns: "):
        copy(body="Your size {{ shoe_size }}")


def test_syntax_error_names_the_field():
    with pytest.raises(TemplateError, match="campaign c step s title: line 1"):
        copy(title="Hi {{ firstName ")


def test_undefined_variable_in_data_is_an_error():
    with pytest.raises(TemplateError, match=r"data.link: undefined variable nope"):
        copy(data={"link": "{{ nope }}"})


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ({"firstName": "Ana", "top_target_shoe": "x"}, None),
        ({"firstName": "   ", "top_target_shoe": "x"}, None),  # "Hi" is left
    ],
)
def test_rendered_title_is_stripped(row, error):
    assert copy().render(row).error == error


def test_empty_title_or_body_is_a_row_error():
    assert copy(title="{{ firstName }}").render({"firstName": "", "top_target_shoe": "x"}).error == "empty title"
    assert copy(body="{{ top_target_shoe }}").render({"firstName": "A", "top_target_shoe": None}).error == "empty body"


def test_message_over_fcm_payload_limit_is_a_row_error():
    rendered = copy(body="{{ top_target_shoe }}").render({"firstName": "A", "top_target_shoe": "x" * FCM_PAYLOAD_LIMIT})
    assert rendered.error.startswith("message is ") and "4096-byte limit" in rendered.error


def test_runtime_template_error_is_a_row_error_not_a_crash():
    rendered = copy(body="{{ inventory_count + 1 }}").render({"firstName": "A", "inventory_count": "3"})
    assert rendered.error.startswith("template error:")
