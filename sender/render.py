"""Push copy: Jinja templates over an audience row's columns.

- An undefined variable (not a column of the audience) is an error found before anything is sent.
- A missing value (NULL or '') renders as '' and counts as missing for `default`, so
  `{{ top_target_shoe | default('your grail') }}` reads "your grail" when the user has no shoe.
- A rendered title or body that is empty, or a message over FCM's 4096-byte payload limit, is an
  error for that row: reported, not sent.
- Templates run in Jinja's sandbox with no globals: they read their row's columns and use filters,
  nothing else. Access to an attribute or key starting with `_` is refused when the template is
  compiled (validation fails); anything else unsafe fails at render time, as a row error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import jinja2
import jinja2.meta
import jinja2.nodes
import jinja2.sandbox

FCM_PAYLOAD_LIMIT = 4096  # bytes of notification + data, FCM's limit for a message


def _default(value, default_value="", boolean=False):
    if isinstance(value, jinja2.Undefined) or value is None or value == "" or (boolean and not value):
        return default_value
    return value


ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    finalize=lambda value: "" if value is None else value,
)
ENV.globals.clear()  # no range, cycler, joiner, lipsum, dict, namespace: a template sees its row only
ENV.filters["default"] = ENV.filters["d"] = _default


def _private_access(parsed: jinja2.nodes.Template) -> str | None:
    """The first `x._name` or `x['_name']` in a template, which the sandbox forbids anyway."""
    for node in parsed.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            return name
    return None


class TemplateError(Exception):
    """A template that cannot be used at all (syntax error, unknown variable)."""


@dataclass(frozen=True)
class Rendered:
    title: str
    body: str
    data: dict[str, str]
    error: str | None = None


@dataclass(frozen=True)
class Copy:
    """The compiled templates of one step."""

    title: jinja2.Template
    body: jinja2.Template
    data: dict[str, jinja2.Template]

    def render(self, row: dict) -> Rendered:
        try:
            title = self.title.render(row).strip()
            body = self.body.render(row).strip()
            data = {key: template.render(row) for key, template in self.data.items()}
        except Exception as exc:  # a template can fail at run time in any way (e.g. "3" + 1)
            return Rendered("", "", {}, f"template error: {type(exc).__name__}: {exc}")
        error = None
        if not title:
            error = "empty title"
        elif not body:
            error = "empty body"
        else:
            size = len(json.dumps({"title": title, "body": body, **data}, ensure_ascii=False).encode())
            if size > FCM_PAYLOAD_LIMIT:
                error = f"message is {size} bytes, over FCM's {FCM_PAYLOAD_LIMIT}-byte limit"
        return Rendered(title, body, data, error)


def compile_copy(where: str, title: str, body: str, data: dict[str, str], columns: list[str]) -> Copy:
    """Compile a step's templates; TemplateError names the step, field and problem."""
    sources = {"title": title, "body": body, **{f"data.{k}": str(v) for k, v in data.items()}}
    compiled = {}
    for field, source in sources.items():
        try:
            parsed = ENV.parse(source)
            private = _private_access(parsed)
            if private:
                raise TemplateError(f"{where} {field}: unsafe access to {private!r}: templates may only read columns")
            unknown = sorted(jinja2.meta.find_undeclared_variables(parsed) - set(columns))
            if unknown:
                raise TemplateError(
                    f"{where} {field}: undefined variable {', '.join(unknown)} (columns: {', '.join(columns)})"
                )
            compiled[field] = ENV.from_string(source)  # checks filters and tests exist
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{where} {field}: line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{where} {field}: {exc.message}") from None
    return Copy(
        title=compiled["title"],
        body=compiled["body"],
        data={k: compiled[f"data.{k}"] for k in data},
    )
