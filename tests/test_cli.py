"""The ``supportbot`` command line: output formats, exit codes and error messages."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

import bot
from bot.cli import main
from bot.db.database import Database
from bot.db.models import Contact, Customer, Order

DEMO = Path(bot.__file__).resolve().parent.parent / "knowledge" / "demo"
EVAL_DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "eval" / "intents-dev.tsv"
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nope"
CLASSIFY_KEYS = {"text", "lang", "intent", "confidence", "entities", "urgent"}
INTENTS = {"greeting", "goodbye", "order_status", "quote_request", "complaint", "return_refund",
           "human_agent", "documents", "product_info", "technical_support", "unknown"}


def run(*args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def explain(result: Result) -> str:
    """Assertion message: what the command printed and the exception it raised."""
    return f"{result.output}\n{result.exception!r}"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def db_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> str:
    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", database_url)
    return database_url


def row_counts(url: str) -> dict[str, int]:
    async def _count() -> dict[str, int]:
        database = Database(url)
        try:
            async with database.sessions() as session:
                return {m.__name__: await session.scalar(select(func.count()).select_from(m))
                        or 0 for m in (Customer, Contact, Order)}
        finally:
            await database.dispose()
    return asyncio.run(_count())


# --- classify ---------------------------------------------------------------------------------

def test_classify_prints_one_json_object_per_line() -> None:
    result = run("classify", input="hello\n你好\n\n".encode() + b"\xff\xfe\n" + b"bye\n")
    assert result.exit_code == 1, explain(result)
    lines = json_lines(result.stdout)
    assert len(lines) == 5
    for line in (lines[0], lines[1], lines[2], lines[4]):
        assert set(line) == CLASSIFY_KEYS
        assert line["intent"] in INTENTS
        assert 0.0 <= line["confidence"] <= 1.0
        assert isinstance(line["urgent"], bool) and isinstance(line["entities"], dict)
    assert (lines[0]["text"], lines[0]["lang"], lines[0]["intent"]) == ("hello", "en", "greeting")
    assert (lines[1]["text"], lines[1]["lang"], lines[1]["intent"]) == ("你好", "zh", "greeting")
    assert lines[2]["text"] == "" and lines[2]["intent"] == "unknown"
    assert lines[3]["line"] == 4 and "UTF-8" in lines[3]["error"] and set(lines[3]) == {
        "line", "error"}
    assert lines[4]["text"] == "bye"  # the bad line does not stop the rest
    assert "1 line(s) were not valid UTF-8" in result.stderr
    assert "你好" in result.stdout  # not \\u-escaped


def test_classify_handles_crlf_and_all_good_input() -> None:
    result = run("classify", input=b"hello\r\n")
    assert result.exit_code == 0, explain(result)
    assert json_lines(result.stdout)[0]["text"] == "hello"


def test_classify_a_100kb_line() -> None:
    text = ("Where is my order PO-24117? " * 4000)[:100_000]
    result = run("classify", input=(text + "\n").encode())
    assert result.exit_code == 0, explain(result)
    (line,) = json_lines(result.stdout)
    assert set(line) == CLASSIFY_KEYS
    assert len(line["text"]) == 100_000
    assert line["intent"] in INTENTS
    assert "Traceback" not in result.output


def test_unknown_option_is_a_usage_error() -> None:
    result = run("classify", "--bogus")
    assert result.exit_code == 2
    assert "No such option" in result.stderr and "--bogus" in result.stderr


# --- configuration errors ------------------------------------------------------------------------

def test_malformed_toml_names_the_file_and_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[company\nname = "x"\n', encoding="utf-8")
    result = run("classify", "--config", str(config), input=b"hello\n")
    assert result.exit_code == 2
    assert "broken.toml" in result.stderr
    assert "not valid TOML" in result.stderr and "line 1" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.output


def test_config_option_on_the_group_is_honoured(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[company]\nname = \n", encoding="utf-8")
    result = run("--config", str(config), "classify", input=b"hello\n")
    assert result.exit_code == 2 and "broken.toml" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("classify", "--config", str(tmp_path / "absent.toml"), input=b"hello\n")
    assert result.exit_code == 2
    assert "absent.toml" in result.stderr and "not found" in result.stderr


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "supportbot.toml"
    config.write_text('[company]\nnmae = "x"\n', encoding="utf-8")
    result = run("classify", "--config", str(config), input=b"hello\n")
    assert result.exit_code == 2
    assert "company.nmae" in result.stderr and "unknown key" in result.stderr


def test_default_config_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "supportbot.toml").write_text('[web]\nport = 0\n', encoding="utf-8")
    result = run("classify", input=b"hello\n")
    assert result.exit_code == 2 and "web.port" in result.stderr


@pytest.mark.parametrize("extra", [
    'bogus = 1',
    'mode = "carrier-pigeon"',
    'webhook_secret = ["SUPERSECRET-2"]',
])
def test_config_error_never_prints_a_secret(tmp_path: Path, extra: str) -> None:
    config = tmp_path / "supportbot.toml"
    config.write_text(f'[telegram]\ntoken = "123456:SUPERSECRET"\n{extra}\n', encoding="utf-8")
    result = run("classify", "--config", str(config), input=b"hello\n")
    assert result.exit_code == 2
    assert "telegram." in result.stderr  # the key is named
    assert "SUPERSECRET" not in result.output and "SUPERSECRET" not in result.stderr


def test_bad_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", "mysql://root:SUPERSECRET@db/x")
    result = run("report")
    assert result.exit_code == 2
    assert "database.url" in result.stderr and "SUPERSECRET" not in result.stderr


# --- database ------------------------------------------------------------------------------------

def test_db_upgrade_prints_the_revision(db_env: str) -> None:
    from alembic.script import ScriptDirectory

    from bot.db.database import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    result = run("db", "upgrade")
    assert result.exit_code == 0, explain(result)
    assert result.stdout.strip().endswith(f"is at revision {head}")
    again = run("db", "upgrade")  # idempotent
    assert again.exit_code == 0 and again.stdout == result.stdout


@pytest.mark.parametrize("args", [("db", "upgrade"), ("report",), ("report", "--json"),
                                  ("import", str(DEMO / "customers.jsonl"))])
def test_unreachable_database_exits_3(monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    monkeypatch.setenv("SUPPORTBOT_DATABASE__URL", UNREACHABLE)
    result = run(*args)
    assert result.exit_code == 3, explain(result)
    assert "cannot connect to database" in result.stderr
    assert "127.0.0.1:1/nope" in result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_import_demo_files(db_env: str) -> None:
    assert run("db", "upgrade").exit_code == 0  # PostgreSQL is never migrated implicitly
    result = run("import", str(DEMO / "customers.jsonl"), str(DEMO / "orders.jsonl"))
    assert result.exit_code == 0, explain(result)
    assert result.stdout.strip() == "imported 3 customer(s), 6 order(s), 0 order event(s)"
    assert row_counts(db_env) == {"Customer": 3, "Contact": 5, "Order": 6}
    again = run("import", str(DEMO / "customers.jsonl"), str(DEMO / "orders.jsonl"))
    assert again.exit_code == 0 and row_counts(db_env) == {"Customer": 3, "Contact": 5,
                                                          "Order": 6}


def test_import_dry_run_writes_nothing(db_env: str) -> None:
    run("db", "upgrade")
    result = run("import", "--dry-run", str(DEMO / "customers.jsonl"))
    assert result.exit_code == 0, explain(result)
    assert result.stdout.startswith("checked 3 customer(s)")
    assert row_counts(db_env)["Customer"] == 0


def test_import_bad_file_lists_every_line_and_exits_1(db_env: str, tmp_path: Path) -> None:
    bad = tmp_path / "customers.jsonl"
    bad.write_text('{"id": "C-1"}\n{"id": "C-2", "language": "tlh"}\n{"id": \n',
                   encoding="utf-8")
    result = run("import", str(DEMO / "customers.jsonl"), str(bad))
    assert result.exit_code == 1
    assert f"{bad}: line 2: language:" in result.stderr
    assert f"{bad}: line 3: not valid JSON" in result.stderr
    assert "nothing imported: 2 problem(s)" in result.stderr
    assert result.stdout == ""
    run("db", "upgrade")
    assert row_counts(db_env)["Customer"] == 0


def test_import_missing_file_exits_1(db_env: str, tmp_path: Path) -> None:
    result = run("import", str(tmp_path / "none.csv"))
    assert result.exit_code == 1
    assert "none.csv: file not found" in result.stderr


def test_report_json_after_import(db_env: str) -> None:
    assert run("db", "upgrade").exit_code == 0
    assert run("import", str(DEMO / "customers.jsonl")).exit_code == 0
    result = run("report", "--json")
    assert result.exit_code == 0, explain(result)
    figures = json.loads(result.stdout)
    assert set(figures) >= {"conversations", "first_response", "sla", "satisfaction",
                            "disputes", "delivery", "owners", "targets"}
    assert figures["conversations"]["total"] == 0
    text = run("report")
    assert text.exit_code == 0 and "Targets" in text.stdout


# --- eval ----------------------------------------------------------------------------------------

def test_eval_on_the_dev_set() -> None:
    if not EVAL_DEV.is_file():
        pytest.skip(f"{EVAL_DEV} is missing")
    result = run("eval", str(EVAL_DEV))
    assert result.exit_code == 0, explain(result)
    assert "intent accuracy" in result.stdout
    assert "classifications/s" in result.stdout


def test_eval_json_counts_every_message(tmp_path: Path) -> None:
    tsv = tmp_path / "mini.tsv"
    tsv.write_text("lang\tintent\ttext\nen\tgreeting\thello\nzh\tgreeting\t你好\n",
                   encoding="utf-8")
    result = run("eval", "--json", str(tsv))
    assert result.exit_code == 0, explain(result)
    report = json.loads(result.stdout)
    assert report["samples"] == 2
    assert report["per_language"]["zh"]["total"] == 1
    assert 0.0 <= report["intent_accuracy"] <= 1.0


def test_eval_wrong_header_exits_1_naming_line_1(tmp_path: Path) -> None:
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("language\tlabel\tmessage\nen\tgreeting\thello\n", encoding="utf-8")
    result = run("eval", str(tsv))
    assert result.exit_code == 1
    assert "bad.tsv: line 1" in result.stderr and "header" in result.stderr
