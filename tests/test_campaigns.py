"""Campaign declarations: never read from a stale manifest, validated strictly (DELIVERY.md, issue 7 finding 7).

Each test works on its own copy of the dbt project (the YAML is edited there, never in the repository)
with the real dbt, parsed in process through campaigns.load_campaigns; one test goes through the real CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sender import campaigns
from sender.config import Config, resolve
from sender.errors import ExitCode, UserError

ROOT = Path(__file__).resolve().parent.parent
DBT_FILES = ("dbt_project.yml", "profiles.yml", "models", "macros", "seeds", "tests/dbt", "analyses", "snapshots")
LAYER3 = "models/marts/layer3/_layer3__models.yml"
WHERE = f"campaign layer3-behavior ({LAYER3}): "


def copy_project(source: Path, target: Path) -> None:
    """The dbt part of a project, modification times kept (so a fresh manifest stays fresh)."""
    for name in DBT_FILES:
        path = source / name
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target / name)
        elif path.is_file():
            shutil.copy2(path, target / name)
    if not (target / "profiles.yml").exists():
        shutil.copy2(source / "profiles.example.yml", target / "profiles.yml")


@pytest.fixture(scope="module")
def parsed_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with a manifest parsed by load_campaigns itself (there was none)."""
    path = tmp_path_factory.mktemp("campaigns") / "project"
    copy_project(ROOT, path)
    messages: list[str] = []
    campaigns.load_campaigns(resolve(path), log=messages.append)
    assert len(messages) == 1 and "no manifest" in messages[0], messages
    return path


@pytest.fixture
def config(parsed_project: Path, tmp_path: Path) -> Config:
    """This test's own copy of the parsed project (manifest, partial parse state and mtimes included)."""
    path = tmp_path / "project"
    shutil.copytree(parsed_project, path)
    return resolve(path)


def edit(config: Config, relative: str, old: str, new: str) -> None:
    path = config.project_dir / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {relative}"
    path.write_text(text.replace(old, new))


def load_error(config: Config) -> str:
    with pytest.raises(UserError) as caught:
        campaigns.load_campaigns(config)
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    return str(caught.value)


def test_a_fresh_manifest_is_used_as_it_is(config: Config) -> None:
    before = config.manifest_path.stat().st_mtime_ns
    messages: list[str] = []
    found = campaigns.load_campaigns(config, log=messages.append)
    assert sorted(found) == ["layer2-trending", "layer3-behavior", "layer5-waterfall"]
    assert messages == []
    assert config.manifest_path.stat().st_mtime_ns == before
    layer3 = found["layer3-behavior"]
    assert (layer3.layer, layer3.active, layer3.priority, layer3.send_time, layer3.path) == (
        3,
        True,
        30,
        "13:05",
        LAYER3,
    )
    assert str(layer3.zone) == "America/Chicago"
    assert campaigns.find_campaign(config, "generate_layer_3_push_csvs") == layer3
    assert campaigns.find_step(layer3, "closet-adders").table == "layer3_closet_adders"


def test_switching_a_campaign_off_takes_effect_without_dbt_parse(config: Config) -> None:
    """Finding 7: `active: false` in the YAML, no re-parse, and the sender still sent live."""
    edit(config, LAYER3, "        active: true\n", "        active: false\n")
    messages: list[str] = []
    assert campaigns.find_campaign(config, "layer3-behavior", log=messages.append).active is False
    assert len(messages) == 1 and f"{LAYER3} changed" in messages[0], messages
    parsed_at = config.manifest_path.stat().st_mtime_ns
    assert campaigns.find_campaign(config, "layer3-behavior", log=messages.append).active is False
    assert len(messages) == 1, "a manifest parsed after the edit must not be parsed again"
    assert config.manifest_path.stat().st_mtime_ns == parsed_at


def test_an_edited_push_copy_is_used_without_dbt_parse(config: Config) -> None:
    """Finding 7: an unparsed copy edit blocked every campaign with "dbt rendered its Jinja"."""
    edit(config, LAYER3, "Make an offer.{% endraw %}", "Make an offer today.{% endraw %}")
    step = campaigns.find_step(campaigns.find_campaign(config, "layer3-behavior"), "wishlist-adders")
    assert (
        step.body == "{{ inventory_count }} traders have it in size {{ relevant_variant_size }}. Make an offer today."
    )


def test_a_file_added_with_an_old_mtime_still_counts(config: Config) -> None:
    """A file copied in with its old mtime changes its folder's mtime: the manifest is stale."""
    source = (config.project_dir / "models/marts/layer2/_layer2__models.yml").read_text()
    exposure = source[source.index("exposures:") :]
    for old, new in [("layer2_trending", "layer2_trending_copy"), ("layer2-trending", "layer2-copy"),
                     ("generate_layer_2_push_csv", "old_copy_id")]:  # fmt: skip
        exposure = exposure.replace(f"{old}\n", f"{new}\n").replace(f"{old}]", f"{new}]")
    added = config.project_dir / "models/marts/layer2/_layer2__copy.yml"
    added.write_text("version: 2\n\n" + exposure)
    os.utime(added, (1_000_000_000, 1_000_000_000))
    assert "layer2-copy" in campaigns.load_campaigns(config)


def test_unwrapped_jinja_is_still_refused(config: Config) -> None:
    edit(config, LAYER3, "title: 'Your offer is out there'", "title: '{{ \"Your offer\" }} is out there'")
    message = load_error(config)
    assert message == (
        WHERE + "steps.offer-creators.title: dbt rendered its Jinja when parsing; "
        "wrap the template in {% raw %}...{% endraw %}"
    )


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("        active: true\n", '        active: "false"\n',
         "active: must be true or false, not the string 'false'"),
        ("        layer: 3\n", "        layer: abc\n", "layer: must be an integer, not the string 'abc'"),
        ("        timezone: America/Chicago\n", "        timezone: Mars/Olympus\n",
         "timezone: must be an IANA time zone such as America/Chicago, not the string 'Mars/Olympus'"),
        ('        send_time: "13:05"\n', "        send_time: 13:05\n",
         'send_time: must be a time "HH:MM" in quotes (unquoted, YAML reads 13:05 as a number), not 785'),
        ("        lead_minutes: 30\n", "        lead_minutes: -5\n",
         "lead_minutes: must be a whole number of minutes >= 0, not -5"),
        ("          - name: closet-adders\n", "          - name: offer-creators\n",
         "steps.name: 'offer-creators' is used by more than one step"),
        ("            model: layer3_closet_adders\n", "            model: layer3_closet_adderz\n",
         "steps.closet-adders.model: no dbt model named 'layer3_closet_adderz'"),
        ("            model: layer3_closet_adders\n", "            model: layer2_trending_top1\n",
         "steps.closet-adders.model: not in the exposure's depends_on: add ref('layer2_trending_top1') there"),
        ("            file_prefix: recent-closet-adders\n", "            file_prefix: recent-closet-adders\n"
         "            delay_minute: 5\n",
         "steps.closet-adders.delay_minute: unknown field (known: body, data, delay_minutes, file_prefix, model, "
         "name, test_placeholders, title)"),
    ],
    ids=["active-string", "layer", "timezone", "send-time", "lead", "duplicate-step", "unknown-model",
         "model-not-in-depends-on", "unknown-field"],
)  # fmt: skip
def test_a_bad_declaration_is_one_line_naming_campaign_field_and_problem(
    config: Config, old: str, new: str, problem: str
) -> None:
    edit(config, LAYER3, old, new)
    assert load_error(config) == WHERE + problem


def test_missing_steps(config: Config) -> None:
    path = config.project_dir / LAYER3
    text = path.read_text()
    path.write_text(text[: text.index("        steps:\n")])
    assert load_error(config) == WHERE + "steps: missing (must be a non-empty list of steps)"


def test_every_problem_is_reported_one_per_line(config: Config) -> None:
    edit(config, LAYER3, "        active: true\n", '        active: "false"\n')
    edit(config, LAYER3, "        layer: 3\n", "        layer: abc\n")
    assert load_error(config).splitlines() == [
        WHERE + "layer: must be an integer, not the string 'abc'",
        WHERE + "active: must be true or false, not the string 'false'",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [("[]", "is not a JSON object"), ('{"nodes": {}}', "has no `nodes` or no `exposures`"), ("{", "cannot read")],
)
def test_a_malformed_manifest_is_one_line(config: Config, content: str, problem: str) -> None:
    config.manifest_path.write_text(content)  # newer than the project: used as it is
    message = load_error(config)
    assert problem in message and "\n" not in message and "run `dbt parse`" in message


def test_a_project_dbt_cannot_parse_is_one_line(config: Config) -> None:
    edit(config, LAYER3, "exposures:\n", "exposures:\n  - broken: [\n")
    message = load_error(config)
    assert "\n" not in message, message
    assert message.startswith(f"dbt could not parse {config.project_dir}: Parsing Error: ")
    assert "marts/layer3/_layer3__models.yml" in message and message.endswith("; run `dbt parse`")


def test_not_a_dbt_project(tmp_path: Path) -> None:
    message = load_error(resolve(tmp_path))
    assert message == f"no dbt project in {tmp_path} (no dbt_project.yml): use --project-dir or DBT_PROJECT_DIR"


def test_cli_reports_a_bad_declaration_in_one_line(config: Config, tmp_path: Path) -> None:
    edit(config, LAYER3, "        active: true\n", '        active: "false"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBT_")}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sender"), "--project-dir", str(config.project_dir),
         "export", "layer3-behavior", "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    lines = result.stderr.strip().splitlines()  # the parse of the edited project is logged first
    assert lines[-1] == f"error: {WHERE}active: must be true or false, not the string 'false'"
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert not (tmp_path / "out").exists()
