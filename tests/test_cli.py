"""The CLI skeleton: help, inspection commands, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitmed_cli.cli import app
from vitmed_cli.registry import db as regdb

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["ingest", "split", "pretrain-load", "finetune", "predict", "compare", "report",
            "datasets", "runs", "checkpoints", "evals", "db", "demo"]


def invoke(*args, **kwargs):
    return runner.invoke(app, list(args), **kwargs)


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("group", ["datasets", "runs", "evals"])
def test_list_json_on_fresh_registry_is_empty_array(group, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = invoke("--db", url, group, "list", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    engine = regdb.create_registry_engine(url)
    assert regdb.current_revision(engine) == regdb.head_revision()
    engine.dispose()


def test_checkpoints_list_json_and_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert json.loads(invoke("--db", url, "checkpoints", "list", "--json").stdout) == []
    result = invoke("--db", url, "checkpoints", "list")
    assert result.exit_code == 0 and "no checkpoints yet" in result.stdout


def test_root_json_flag_applies_to_subcommands(tmp_path):
    result = invoke("--db", f"sqlite:///{tmp_path / 'r.db'}", "--json", "runs", "list")
    assert json.loads(result.stdout) == []


def test_default_registry_lives_in_vitmed_home(_isolated_workspace):
    result = invoke("runs", "list", "--json")
    assert result.exit_code == 0
    assert (_isolated_workspace / "registry.db").is_file()


def test_env_var_names_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("VITMED_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert invoke("runs", "list", "--json").exit_code == 0
    assert (tmp_path / "env.db").is_file()


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_unknown_driver_is_one_clear_line():
    _one_line_error(invoke("--db", "mysqlx://u@h/db", "runs", "list"),
                    "unknown database driver", "sqlite:///", "postgresql+psycopg://")


def test_missing_sqlite_folder_is_one_clear_line(tmp_path):
    _one_line_error(invoke("--db", f"sqlite:///{tmp_path}/no/such/dir/r.db", "runs", "list"),
                    "does not exist", "--db")


def test_unreachable_server_is_one_clear_line():
    # Port 9 on loopback (discard) has no PostgreSQL server: the connection is refused.
    err = _one_line_error(invoke("--db", "postgresql+psycopg://u:secret@127.0.0.1:9/x", "runs", "list"),
                          "cannot open the registry", "server is running")
    assert "secret" not in err


def test_unknown_dataset_is_one_clear_line(tmp_path):
    _one_line_error(invoke("--db", f"sqlite:///{tmp_path / 'r.db'}", "datasets", "show", "vindr"),
                    "unknown dataset 'vindr'", "vitmed ingest")


def test_unknown_run_is_one_clear_line(tmp_path):
    _one_line_error(invoke("--db", f"sqlite:///{tmp_path / 'r.db'}", "runs", "show", "42"),
                    "no run with id 42", "vitmed runs list")


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("--debug", "--db", f"sqlite:///{tmp_path / 'r.db'}", "runs", "show", "42")
    assert result.exit_code != 0
    assert result.exception is not None and "no run with id 42" in str(result.exception)


def test_db_current_and_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    out = json.loads(invoke("--db", url, "db", "current", "--json").stdout)
    assert out["current"] is None and out["head"] == regdb.head_revision()
    up = json.loads(invoke("--db", url, "db", "upgrade", "--json").stdout)
    assert up["to"] == regdb.head_revision()
    out = json.loads(invoke("--db", url, "db", "current", "--json").stdout)
    assert out["up_to_date"] is True


def test_python_dash_m_runs_the_same_cli(tmp_path):
    env = {**os.environ, "VITMED_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "vitmed_cli", "runs", "list", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_console_script_errors_without_traceback(tmp_path):
    env = {**os.environ, "VITMED_HOME": str(tmp_path)}
    # the console script installed beside this interpreter: the test must not depend on PATH
    # (a virtual environment that is not activated)
    script = Path(sysconfig.get_path("scripts")) / "vitmed"
    proc = subprocess.run([str(script), "--db", "nope://x", "runs", "list"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _all_commands(group, prefix=()):
    import typer.main

    click_group = typer.main.get_command(app) if group is None else group
    for name, cmd in click_group.commands.items():
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, path)
        else:
            yield path, cmd


def test_every_command_has_help_with_an_example_and_is_in_readme():
    readme = (ROOT / "README.md").read_text()
    for path, cmd in _all_commands(None):
        assert cmd.help and "Example: vitmed" in cmd.help, f"{' '.join(path)} needs a docstring example"
        # the full command, e.g. "vitmed datasets export": a mention of the group alone does not count
        assert f"vitmed {' '.join(path)}" in readme, f"README.md does not mention vitmed {' '.join(path)}"


def test_every_argument_and_option_has_help():
    for path, cmd in _all_commands(None):
        missing = [p.name for p in cmd.params if not getattr(p, "help", None)]
        assert not missing, f"vitmed {' '.join(path)}: no help for {', '.join(missing)}"


def test_delete_commands_refuse_or_cascade(tmp_path):
    from helpers import populate_registry as _populate

    url = f"sqlite:///{tmp_path / 'r.db'}"
    reg = regdb.open_registry(url)
    ids = _populate(reg)
    reg.dispose()
    _one_line_error(invoke("--db", url, "datasets", "delete", "toy", "--yes"),
                    "dataset 'toy' is used by 1 run(s)")
    # without --yes the question is asked, and "no" keeps the run
    assert invoke("--db", url, "runs", "delete", str(ids["run"]), input="n\n").exit_code == 1
    assert len(json.loads(invoke("--db", url, "runs", "list", "--json").stdout)) == 1
    out = json.loads(invoke("--db", url, "runs", "delete", str(ids["run"]), "--yes", "--json").stdout)
    assert out == {"id": ids["run"], "deleted": True}
    assert json.loads(invoke("--db", url, "runs", "list", "--json").stdout) == []
    out = invoke("--db", url, "evals", "delete", str(ids["eval_b"]), "--yes")
    assert out.exit_code == 0 and f"deleted evaluation {ids['eval_b']}" in out.stdout
    out = invoke("--db", url, "datasets", "delete", "toy", "--yes")
    assert out.exit_code == 0 and "deleted dataset toy (2 images)" in out.stdout


def test_package_exports_the_main_functions():
    import vitmed_cli

    for name in vitmed_cli.__all__:
        obj = getattr(vitmed_cli, name)
        if name == "__version__":
            assert obj == vitmed_cli.__version__ and obj.count(".") == 2
            continue
        # each public name is the library's own function or class, loaded from its module
        assert callable(obj) and obj.__module__.startswith("vitmed_cli."), name
        assert obj.__name__ == name, name
    assert vitmed_cli.roc_auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4]) == 0.875


def test_bare_registry_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a typo that is neither a URL nor a .db file does not start a new registry
    _one_line_error(invoke("--db", "registy", "runs", "list"),
                    "registry 'registy' is neither a URL nor an existing file")
    assert not (tmp_path / "registy").exists()
    # a path ending in .db is a SQLite file, created on first use
    assert json.loads(invoke("--db", "lab.db", "runs", "list", "--json").stdout) == []
    assert (tmp_path / "lab.db").is_file()


def test_the_suite_does_not_depend_on_path_or_the_users_settings(tmp_path):
    """Run CLI tests as a user would with an inactive virtual environment and their own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITMED_", "PYTEST_"))}
    env.update(PATH="/usr/bin:/bin",  # the interpreter's scripts folder is not on it
               VITMED_DB_URL=f"sqlite:///{tmp_path / 'users-own.db'}", VITMED_DEBUG="1",
               VITMED_HOME=str(tmp_path / "users-home"))
    tests = [f"{ROOT / 'tests' / 'test_cli.py'}::{name}" for name in
             ("test_console_script_errors_without_traceback", "test_bare_registry_paths",
              "test_delete_commands_refuse_or_cascade")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", *tests],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "3 passed" in proc.stdout
    assert not (tmp_path / "users-own.db").exists() and not (tmp_path / "users-home").exists()


def test_loading_the_cli_imports_no_numerical_library():
    """Every command's module loads at start-up; torch, timm, scipy, pandas and scikit-learn load
    only inside the commands that compute, so `vitmed --help` or `runs list` starts in a second."""
    heavy = ("torch", "timm", "scipy", "pandas", "sklearn", "torchvision")
    code = f"import sys, vitmed_cli.cli; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
