"""Start-up cost: `import opdwatch` imports no submodule, `opdwatch --help` no subcommand module and no data
library, and `opdwatch info` on a compacted run neither numpy nor pyarrow (docs/scale.md, issue 17: a whole
`opdwatch info` process < 0.5 s). Each check runs a fresh interpreter and looks at its ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import opdwatch
from opdwatch.cli import COMMANDS, build_parser, main
from tests.synthetic_runs import make_run

ROOT = Path(__file__).resolve().parents[1]
USES = {"demo": ("opdwatch.cli.train",)}  # command -> other command modules its module imports (import_trainer)
HEAVY = ("numpy", "polars", "pyarrow", "pandas", "rich", "yaml", "plotly", "dash", "torch", "transformers")


def _imported_by(code: str, *args: str) -> set[str]:
    """The modules a fresh interpreter has imported after ``code`` (which must print nothing)."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _tops(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(names))


def _cli_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("opdwatch.cli."))


def test_every_exported_name_is_there() -> None:
    assert opdwatch.__all__ and len(set(opdwatch.__all__)) == len(opdwatch.__all__)
    for name in opdwatch.__all__:
        assert getattr(opdwatch, name) is not None, name
        exec(f"from opdwatch import {name}", {})  # noqa: S102 - the import statement users write
        assert name in dir(opdwatch)
    assert opdwatch.open_run is __import__("opdwatch.reader").reader.open_run
    assert opdwatch.Recorder.__module__ == "opdwatch.recorder"
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        opdwatch.no_such_name  # noqa: B018
    from opdwatch import metrics  # a submodule, not an exported name, still imports as one

    assert metrics.is_repetitive is opdwatch.is_repetitive


def test_import_opdwatch_imports_no_submodule_and_no_library() -> None:
    modules = _imported_by("import opdwatch")
    assert _tops(modules, HEAVY) == []
    assert sorted(m for m in modules if m.startswith("opdwatch.")) == ["opdwatch._version"]


def test_a_lazy_name_is_imported_on_first_use() -> None:
    modules = _imported_by("import opdwatch\nopdwatch.OpdwatchError")
    assert "opdwatch.errors" in modules and "opdwatch.reader" not in modules


def test_help_imports_no_command_module_and_no_data_library() -> None:
    modules = _imported_by("import contextlib, io\nfrom opdwatch.cli import main\n"
                           "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                           "    main(['--help'])")
    assert _tops(modules, HEAVY) == []
    assert _cli_modules(modules) == []


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_a_commands_help_imports_only_its_own_module(command: str) -> None:
    modules = _imported_by("import contextlib, io, sys\nfrom opdwatch.cli import main\n"
                           "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
                           "    main([sys.argv[1], '--help'])", command)
    (entry,) = [c for c in COMMANDS if c.name == command]
    assert _cli_modules(modules) == sorted({entry.module_name, *USES.get(command, ())})
    assert entry.module_name in modules
    assert _tops(modules, ("torch", "transformers", "dash", "plotly")) == []


def test_info_on_a_compacted_run_imports_neither_numpy_nor_pyarrow(tmp_path: Path) -> None:
    from opdwatch.compaction import compact

    run = make_run(tmp_path / "run", steps=12, collapse_at=8)
    compact(run)
    for argv in (["info", str(run)], ["info", "--json", str(run)]):
        code = ("import contextlib, io, sys\nfrom opdwatch.cli import main\n"
                "with contextlib.redirect_stdout(io.StringIO()):\n"
                "    assert main(sys.argv[1:]) == 0")
        modules = _imported_by(code, *argv)
        assert set(_tops(modules, HEAVY)) <= {"polars", "rich"}, argv  # polars reads the segment, rich prints
        assert _cli_modules(modules) == ["opdwatch.cli.info"]


def test_the_parser_loads_a_commands_arguments_when_it_is_parsed(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["info", "some-run", "--json"])
    assert (args.command, args.run_dir, args.json) == ("info", "some-run", True)
    assert callable(args.handler)
    loaded = build_parser(load=True)  # every command's options, for listing or documenting them
    sub = next(a for a in loaded._actions if a.dest == "command")
    assert list(sub.choices) == [c.name for c in COMMANDS]
    assert all(any(a.dest != "help" for a in p._actions) for p in sub.choices.values())
    with pytest.raises(SystemExit) as exc:
        main(["import", "--help"])
    assert exc.value.code == 0 and "verl" in capsys.readouterr().out  # the choices of its FORMAT argument


def test_format_builds_its_arrow_schemas_on_first_use() -> None:
    import pyarrow as pa

    from opdwatch import format as fmt
    from opdwatch.format import ROLLOUT_SCHEMA, STEP_KEY_COLUMNS, TOKEN_SCHEMA
    from opdwatch.run_files import STEP_KEYS, TABLE_SCHEMAS, polars_schema

    assert isinstance(ROLLOUT_SCHEMA, pa.Schema) and isinstance(TOKEN_SCHEMA, pa.Schema)
    assert fmt.ROLLOUT_SCHEMA is ROLLOUT_SCHEMA  # built once
    assert set(STEP_KEY_COLUMNS) == set(STEP_KEYS)
    assert dict(TABLE_SCHEMAS) == {"rollouts": polars_schema(ROLLOUT_SCHEMA), "tokens": polars_schema(TOKEN_SCHEMA)}
    with pytest.raises(AttributeError):
        fmt.NO_SUCH_SCHEMA  # noqa: B018
