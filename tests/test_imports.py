"""Import structure: no import cycles between edgert's modules, ``edgert serve`` imports no
training, evaluation or bench code, and low-level modules do not import upward."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the installed package names of the repository's directories (pyproject.toml, package-dir)
PACKAGES = {"edgert": ROOT / "edgert", "edgert.kernels": ROOT / "kernels", "edgert.bench": ROOT / "bench"}
# what `edgert serve` must never import (`python -X importtime` names every module imported)
NOT_FOR_SERVE = ("edgert.train", "edgert.retrain", "edgert.evaluate", "edgert.bench",
                 "edgert.compiler", "edgert.edgetpu_check", "edgert.fleet", "flwr", "tensorflow", "keras",
                 "tf_keras")
# cycles that exist and are not this test's to fix: none any more (models <-> scoring: ModelError
# lives in edgert.errors; bench.naive <-> bench.peers: the F1 scoring is in bench.quality and the
# ONNX converter is handed to naive by its callers; evaluate.itsc <-> train: itsc imports the
# edgert.train modules it needs, none of which imports it back). A new cycle fails.
KNOWN_CYCLES: list = []


def _modules() -> dict:
    """Module name -> file, for every module of the repository's packages."""
    mods = {}
    for pkg, d in PACKAGES.items():
        for f in d.rglob("*.py"):
            parts = list(f.relative_to(d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg, *parts])] = f
    return mods


def _imported(name: str, f: Path, node) -> list:
    """Names an import statement of module `name` (file `f`) may refer to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = name.split(".")
    if node.level:
        if f.name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module
    return [mod, *(f"{mod}.{a.name}" for a in node.names)]


def import_graph() -> dict:
    """Module -> the repository's modules it imports anywhere (top level or in a function)."""
    mods = _modules()
    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for m in _imported(name, f, node):
                    while m and m not in mods:
                        m = m.rpartition(".")[0]
                    if m and m != name and not name.startswith(m + "."):  # a package's own parent
                        deps.add(m)
        graph[name] = deps
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_new_import_cycles():
    """bench.peers <-> bench.run and evaluate.skab <-> evaluate.skab_adapt are gone, and no
    other cycle is there but the known ones."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    found = cycles(import_graph())
    assert found == sorted(KNOWN_CYCLES), f"import cycles: {found}"


def test_low_level_modules_do_not_import_upward():
    """tflite imports nothing of edgert; models imports no backend (backends import models)."""
    g = import_graph()
    assert g["edgert.tflite"] == set()
    assert not {m for m in g["edgert.models"] if m.startswith("edgert.backends")}
    assert "edgert.tflite" in g["edgert.models"]


def _imported_by(code: list) -> list:
    """Modules a fresh interpreter imports running `code` (``python -X importtime ...``)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("_ARGCOMPLETE", None)
    r = subprocess.run([sys.executable, "-X", "importtime", *code], capture_output=True,
                       text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    mods = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", r.stderr, re.M)
    assert "edgert.cli" in mods or "edgert.daemon" in mods, r.stderr[-2000:]
    return mods


def _forbidden(mods: list) -> list:
    return [m for m in mods if any(m == p or m.startswith(p + ".") for p in NOT_FOR_SERVE)]


def test_serve_help_imports_no_training_evaluation_or_bench_code():
    mods = _imported_by(["-m", "edgert", "serve", "--help"])
    assert not _forbidden(mods), _forbidden(mods)


def test_serve_run_path_imports_no_training_evaluation_or_bench_code():
    """What ``edgert serve`` imports to run: its parser, then cmd_serve's modules."""
    code = ("import edgert.cli as c; a = c.build_parser('serve').parse_args(['serve']); "
            "import edgert.config, edgert.sdnotify, edgert.daemon")
    mods = _imported_by(["-c", code])
    assert "edgert.daemon" in mods and "edgert.backends" in mods
    assert not _forbidden(mods), _forbidden(mods)


def test_lazy_commands_list_the_help_of_their_modules():
    """``edgert -h`` lists a lazily added command with the help its module gives it."""
    import argparse

    from edgert import cli

    full = cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    own = {a.dest: a.help for a in sub._choices_actions}
    for name, (_, help_) in cli.LAZY_COMMANDS.items():
        assert own[name] == help_, name
    lazy = cli.build_parser("serve")
    sub_l = next(a for a in lazy._actions if isinstance(a, argparse._SubParsersAction))
    assert [(a.dest, a.help) for a in sub_l._choices_actions] == list(own.items())


@pytest.mark.parametrize("argv", [["eval", "skab", "--help"], ["bench", "--help"], ["train", "--help"]])
def test_lazy_command_parses_in_full(argv, capsys):
    """The parser built for one command has that command's full options (and main uses it)."""
    from edgert import cli

    for parse in (cli.build_parser(argv[0]).parse_args, cli.main):
        with pytest.raises(SystemExit) as exc:
            parse(argv)
        assert exc.value.code == 0
        assert "usage: edgert " + " ".join(argv[:-1]) in capsys.readouterr().out
