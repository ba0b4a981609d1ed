"""Mutation testing of the library: which one-line wrong changes does no test notice?

    python bench/mutation.py public/engine/train/stability.py public/ops     # files or folders
    python bench/mutation.py public/ops/boxes.py --slow      # also the tests marked slow
    python bench/mutation.py --report                         # rewrite docs/mutation.md from the results

Each module is parsed with ``ast`` and changed one node at a time (a *mutant*): arithmetic and
comparison operators swapped (``+``/``-``, ``*``/``/``, ``<``/``<=``, ``==``/``!=``, ``is``/``is
not``, ``and``/``or``), ``not`` and unary minus dropped, numbers moved (n -> n + 1, x -> x + 1.0),
``True``/``False`` swapped, compared strings changed, ``min``/``max`` and ``any``/``all``
swapped, one keyword argument of a call dropped (its default then applies), and a statement
(a call, an attribute or item assignment, ``x += ...``, ``raise``, ``continue``/``break``)
replaced by ``pass``. Docstrings, annotations, log and warning calls and the text of error
messages are left alone; a line ending in ``# pragma: no mutate`` too.

Tests run only where they can notice: one traced run of the tests that import the module
(directly or through other modules) records which lines each test executes and how long it
takes; a mutant then runs, fastest first and stopping at the first failure, only the tests that
executed its line (a mutant outside any function body, e.g. a module constant or a default
argument, runs them all). A mutant no test executes is "no coverage" without running anything.
The mutants run in a scratch copy of the repository (so that ``python train.py`` subprocesses
of a test see the change too), each in a process forked from one that has torch, torchvision and
pytest imported already: a mutant costs its tests plus ~1 s of collection, not a fresh start.

Statuses: killed (a test failed, or the module no longer imports), timeout (ran over 3 x its
tests' time + 30 s: counted as killed), survived, no coverage. The score is
(killed + timeout) / (mutants - equivalent). A survivor that cannot change behaviour (or only in
a way no user can see) is listed in ``bench/mutation_equivalents.txt`` by its id with one line
saying why ("equivalent" or "invisible": out of the score); a survivor left for later is listed
there as "known" with why (it still counts against the score).

Results are kept in ``bench/mutation_results.json`` (committed): a rerun redoes a module only if
its source changed, and reruns its survivors only if the tests changed. ``docs/mutation.md`` is
rewritten after every run from all the results kept: the score per module (its first recorded
score beside the current one) and every survivor with file:line, the line and its change.

Tests marked slow are left out unless ``--slow``; lines reached only in a subprocess (the
``train.py`` runs, the DDP spawn) are not traced, so mutants there read "no coverage" unless
``--tests`` names test files to run them all against. Cost: the traced run (about the module's
tests' time x 1.5) plus a few seconds a mutant; one process, one torch thread (``-j 2`` for two).
"""
from __future__ import annotations

import argparse
import ast
import copy
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "mutation_results.json"
EQUIVALENTS = REPO / "bench" / "mutation_equivalents.txt"
REPORT = REPO / "docs" / "mutation.md"
TRACES = REPO / ".mutation_traces"   # the traced runs, by the digest of the modules and tests (not committed)
LIBRARY = ("public", "fcos", "atss", "retinanet", "config.py")

# ---- the mutants -----------------------------------------------------------------------------
BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
               ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
               ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitAnd}
COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
NAME_SWAPS = {"min": "max", "max": "min", "any": "all", "all": "any"}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
          ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.Lt: "<",
          ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
          ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}
# Calls whose arguments are only text for a reader: their strings and numbers are not mutated.
QUIET_CALLS = {"debug", "info", "warning", "warn", "error", "exception", "print", "critical"}


@dataclass
class Mutant:
    id: str
    line: int
    what: str          # e.g. "< -> <="
    before: str        # the line as written
    after: str         # the line as mutated (first line of the change)
    scope: str         # enclosing function's qualified name, "" at module level
    in_body: bool      # inside a function body: its line coverage decides the tests
    uses: list = field(default_factory=list)   # outside a body: the lines that use what it changes
    source: str = field(repr=False, default="")


def _is_docstring(node, parent) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and hasattr(parent, "body") and parent.body and parent.body[0] is node)


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


class _Collector(ast.NodeVisitor):
    """Walks the tree; ``found`` gets (node, replacement node or None for pass, description, scope, in_body)."""

    def __init__(self, skip_lines: set[int]):
        self.found, self.scope, self.in_body, self.quiet = [], [], False, 0
        self.skip_lines = skip_lines

    def add(self, node, new, what):
        if node.lineno not in self.skip_lines:
            self.found.append((node, new, what, ".".join(self.scope), self.in_body, self.owner))

    owner = None   # outside a function body: the name assigned (module / class level) or the def (defaults)

    def visit_stmt_owned(self, stmt):
        """A module- or class-level statement: its mutants are noticed where the names it binds
        are used."""
        outer = self.owner
        if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            self.owner = ("names", {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)})
        self.visit(stmt)
        self.owner = outer

    # -- scopes and what is never mutated
    def visit_FunctionDef(self, node):
        outer = self.owner
        self.owner = ("def", (node.lineno, node.end_lineno))
        for deco in node.decorator_list:
            self.visit(deco)
        self.visit_defaults(node.args)
        self.owner = outer
        self.scope.append(node.name)
        outer, self.in_body = self.in_body, True
        for i, stmt in enumerate(node.body):
            if not (i == 0 and _is_docstring(stmt, node)):
                self.visit(stmt)
        self.in_body = outer
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_defaults(self, args):
        for default in [*args.defaults, *(d for d in args.kw_defaults if d is not None)]:
            self.visit(default)

    def visit_Lambda(self, node):
        self.visit_defaults(node.args)
        self.visit(node.body)

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        for i, stmt in enumerate(node.body):
            if not (i == 0 and _is_docstring(stmt, node)):
                self.visit_stmt_owned(stmt)
        self.scope.pop()

    def visit_Module(self, node):
        for i, stmt in enumerate(node.body):
            if i == 0 and _is_docstring(stmt, node):
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            if (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)
                    and isinstance(stmt.test.left, ast.Name) and stmt.test.left.id == "__name__"):
                continue   # the script entry
            self.visit_stmt_owned(stmt)

    def visit_AnnAssign(self, node):      # the annotation is not code
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node):      # f-strings: text
        return

    def visit_Assert(self, node):         # the library's own checks: their message is text
        self.visit(node.test)

    # -- statements
    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call) and _call_name(node.value) in QUIET_CALLS:
            return
        if isinstance(node.value, ast.Call):
            self.add(node, None, "call removed")
        self.generic_visit(node)

    def visit_Assign(self, node):
        if any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets) and self.in_body:
            self.add(node, None, "assignment removed")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        if type(node.op) in BINOP_SWAPS:
            new = copy.copy(node)
            new.op = BINOP_SWAPS[type(node.op)]()
            self.add(node, new, f"{SYMBOL[type(node.op)]}= -> {SYMBOL[type(new.op)]}=")
        self.add(node, None, "augmented assignment removed")
        self.generic_visit(node)

    def visit_Raise(self, node):
        self.add(node, None, "raise removed")   # its message is text: not visited

    def visit_Continue(self, node):
        self.add(node, None, "continue removed")

    def visit_Break(self, node):
        self.add(node, None, "break removed")

    # -- expressions
    def visit_BinOp(self, node):
        if type(node.op) in BINOP_SWAPS and not self.quiet:
            new = copy.copy(node)
            new.op = BINOP_SWAPS[type(node.op)]()
            self.add(node, new, f"{SYMBOL[type(node.op)]} -> {SYMBOL[type(new.op)]}")
        self.generic_visit(node)

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                new = copy.copy(node)
                new.ops = list(node.ops)
                new.ops[i] = COMPARE_SWAPS[type(op)]()
                self.add(node, new, f"{SYMBOL[type(op)]} -> {SYMBOL[type(new.ops[i])]}")
        for operand in [node.left, *node.comparators]:
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                new = ast.Constant(value="XX" + operand.value + "XX")
                ast.copy_location(new, operand)
                self.add(operand, new, f"{operand.value!r} -> 'XX..XX'")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        new = copy.copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.add(node, new, f"{SYMBOL[type(node.op)]} -> {SYMBOL[type(new.op)]}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.Not, ast.USub, ast.Invert)) and not self.quiet:
            self.add(node, node.operand, {ast.Not: "not removed", ast.USub: "unary - removed",
                                          ast.Invert: "~ removed"}[type(node.op)])
        self.generic_visit(node)

    def visit_Constant(self, node):
        if self.quiet:
            return
        value = node.value
        if isinstance(value, bool):
            self.add(node, ast.Constant(value=not value), f"{value} -> {not value}")
        elif isinstance(value, int):
            self.add(node, ast.Constant(value=value + 1), f"{value} -> {value + 1}")
        elif isinstance(value, float):
            self.add(node, ast.Constant(value=value + 1.0), f"{value} -> {value + 1.0}")

    def visit_Call(self, node):
        name = _call_name(node)
        if name in QUIET_CALLS:
            return
        if isinstance(node.func, ast.Name) and name in NAME_SWAPS:
            new = copy.copy(node)
            new.func = ast.Name(id=NAME_SWAPS[name], ctx=ast.Load())
            self.add(node, new, f"{name} -> {NAME_SWAPS[name]}")
        for i, keyword in enumerate(node.keywords):
            if keyword.arg is not None:
                new = copy.copy(node)
                new.keywords = node.keywords[:i] + node.keywords[i + 1:]
                self.add(node, new, f"argument {keyword.arg}= removed")
        self.generic_visit(node)

    def visit_arguments(self, node):      # annotations and defaults are handled by the def
        return


def _offset(lines: list[str], line: int, col: int) -> int:
    """Character offset in the source of (1-based line, UTF-8 byte column)."""
    text = lines[line - 1]
    return sum(len(l) for l in lines[:line - 1]) + len(text.encode()[:col].decode(errors="ignore"))


def mutants_of(path: Path) -> list[Mutant]:
    """Every mutant of the module at ``path``, each with its whole mutated source."""
    source = path.read_text()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    skip = {i + 1 for i, line in enumerate(lines) if "pragma: no mutate" in line}
    collector = _Collector(skip)
    collector.visit(tree)
    original = ast.dump(tree)
    used_at: dict[str, set[int]] = {}   # name -> lines of the module that read it (as a name or attribute)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            used_at.setdefault(node.id, set()).add(node.lineno)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            used_at.setdefault(node.attr, set()).add(node.lineno)
    rel = path.resolve().relative_to(REPO).as_posix()
    out, seen_ids, seen_sources = [], {}, set()
    for node, new, what, scope, in_body, owner in collector.found:
        start = _offset(lines, node.lineno, node.col_offset)
        end = _offset(lines, node.end_lineno, node.end_col_offset)
        if new is None:
            text = "pass"
        else:
            text = ast.unparse(new)
            text = text if isinstance(node, ast.stmt) else f"({text})"
        mutated = source[:start] + text + source[end:]
        try:
            changed = ast.dump(ast.parse(mutated)) != original
        except SyntaxError:
            continue
        if not changed or mutated in seen_sources:
            continue
        seen_sources.add(mutated)
        before = lines[node.lineno - 1].rstrip("\n")
        after = mutated.splitlines()[node.lineno - 1]
        key = f"{rel}|{scope}|{source[start:end]}|{what}"
        seen_ids[key] = seen_ids.get(key, -1) + 1
        ident = hashlib.sha1(f"{key}|{seen_ids[key]}".encode()).hexdigest()[:8]
        uses: list = []
        if not in_body and owner and owner[0] == "names":
            uses = ["names", sorted(owner[1]), sorted({line for name in owner[1] for line in used_at.get(name, ())})]
        elif not in_body and owner and owner[0] == "def":
            uses = ["def", [], list(range(owner[1][0], owner[1][1] + 1))]
        out.append(Mutant(ident, node.lineno, what, before.strip(), after.strip(), scope, in_body, uses, mutated))
    return out


# ---- which tests -------------------------------------------------------------------------------
def module_name(rel: str) -> str:
    return rel[:-3].replace("/", ".").removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports (dotted names; ``from a import b`` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def tests_importing(targets: list[str]) -> list[str]:
    """The test files that import any of ``targets`` (module names), directly or through other
    project modules."""
    project = {module_name(p.relative_to(REPO).as_posix()): p
               for p in REPO.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
               and p.relative_to(REPO).parts[0] not in ("bench", "data")}
    graph = {name: {i for i in imports_of(path) if i in project} for name, path in project.items()}
    reach: dict[str, set[str]] = {}

    def closure(name, stack=()):
        if name not in reach:
            if name in stack:
                return set()
            found = set(graph.get(name, ()))
            for child in graph.get(name, ()):
                found |= closure(child, (*stack, name))
            reach[name] = found
        return reach[name]

    wanted = set(targets)
    return sorted(project[name].relative_to(REPO).as_posix() for name in project
                  if name.startswith("tests.test_") and (closure(name) & wanted))


def tests_for(m: Mutant, rel: str, module_tests: list[str], lines: dict) -> list[str]:
    """The tests that can notice ``m``: those that executed its line (in a function body); for
    a module or class constant, those that executed a line reading it, or whose file names it;
    for a default argument, those that ran its function; else all that ran the module."""
    if m.in_body:
        return [t for t in module_tests if m.line in lines[t][rel]]
    if m.uses:
        kind, names, used = m.uses
        used = set(used)
        named = {t.split("::")[0] for t in module_tests
                 if kind == "names" and any(re.search(rf"\b{n}\b", (REPO / t.split("::")[0]).read_text())
                                            for n in names)}
        return [t for t in module_tests if used & set(lines[t][rel]) or t.split("::")[0] in named]
    return module_tests


def project_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    project = {module_name(p.relative_to(REPO).as_posix()): p
               for p in REPO.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(REPO).parts)
               and p.relative_to(REPO).parts[0] not in ("bench", "data")}
    return {name: {i for i in imports_of(path) if i in project} for name, path in project.items()}


def preimport(scratch: "Scratch", targets: list[str]) -> None:
    """Import, from the scratch copy, every library module that reaches none of ``targets``:
    each mutant's run then imports only what can see the change. ``gc.freeze`` keeps the
    children's collections off the inherited heap (and its pages shared)."""
    import gc
    import importlib

    graph = project_graph()
    reach: dict[str, set[str]] = {}

    def closure(name, stack=()):
        if name not in reach:
            found = set(graph.get(name, ()))
            for child in graph.get(name, ()):
                if child not in stack:
                    found |= closure(child, (*stack, name))
            reach[name] = found
        return reach[name]

    sys.path.insert(0, str(scratch.root))
    sys.dont_write_bytecode = True
    for name in sorted(graph):
        if (name.split(".")[0] in ("public", "config", "fcos", "atss", "retinanet") and name not in targets
                and not closure(name) & set(targets)):
            try:
                importlib.import_module(name)
            except Exception:   # a module that needs more than an import: left to the tests
                pass
    gc.freeze()


def digest(paths) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        h.update(str(p).encode() + b"\0" + (REPO / p).read_bytes())
    return h.hexdigest()[:12]


def tests_digest() -> str:
    return digest(p.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("*.py"))


# ---- running pytest in a forked copy ----------------------------------------------------------
class Scratch:
    """A copy of the repository where mutants are written (with the built-in datasets generated so far)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="densedet-mutation-")) / "repo"
        junk = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.pth", "*.onnx")
        top = {"data", "work_dirs", ".git"}   # the built-in datasets (linked below) and runs
        shutil.copytree(REPO, self.root, ignore=lambda d, names: junk(d, names) | (
            top & set(names) if Path(d) == REPO else set()))
        for keep in REPO.glob("tests/**/*.pth"):
            shutil.copy2(keep, self.root / keep.relative_to(REPO))
        if (REPO / "data").is_dir():   # the built-in datasets, copied (a link would resolve out of the copy)
            shutil.copytree(REPO / "data", self.root / "data")

    def write(self, rel: str, text: str) -> None:
        (self.root / rel).write_text(text)

    def close(self):
        shutil.rmtree(self.root.parent, ignore_errors=True)


class _Tracer:
    """A pytest plugin recording, per test, the lines of ``files`` it executes and its time."""

    def __init__(self, files: set[str], out: Path):
        self.files, self.out, self.lines, self.times = files, out, {}, {}

    def _global(self, frame, event, arg):
        filename = frame.f_code.co_filename
        if filename not in self.files:
            return None
        hit = self.current.setdefault(filename, set())
        hit.add(frame.f_lineno)

        def local(frame, event, arg):
            hit.add(frame.f_lineno)
            return local
        return local

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        import threading
        self.current = {}
        start = time.perf_counter()
        sys.settrace(self._global)
        threading.settrace(self._global)
        try:
            yield
        finally:
            sys.settrace(None)
            threading.settrace(None)
        self.times[item.nodeid] = time.perf_counter() - start
        self.lines[item.nodeid] = {f: sorted(v) for f, v in self.current.items()}

    def pytest_sessionfinish(self, session, exitstatus):
        self.out.write_text(json.dumps({"times": self.times, "lines": self.lines,
                                        "failed": session.testsfailed}))


def run_pytest(scratch: Scratch, args: list[str], timeout: float, plugins=(), log: Path | None = None) -> str:
    """pytest ``args`` in a child forked from this process, in the scratch copy: "passed",
    "failed", "timeout" or "error" (no test collected, usage error)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            os.setpgid(0, 0)
            fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(scratch.root)
            sys.path.insert(0, str(scratch.root))
            sys.dont_write_bytecode = True
            # unraisableexception's gc.collect() x 5 over torch's heap took 4.5 of a mutant's 8 s
            code = int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
                                    "-o", "addopts=", *args], plugins=list(plugins)))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout"
            time.sleep(0.05)
    except BaseException:   # stopped (Ctrl-C, SIGTERM): the child and what it started go too
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    code = os.waitstatus_to_exitcode(status)
    return {0: "passed", 1: "failed", 2: "failed", 3: "failed"}.get(code, "error")


def coverage(scratch: Scratch, rels: list[str], test_files: list[str], marker: str) -> dict:
    """One traced run of ``test_files``: {"times": nodeid -> s, "lines": nodeid -> {rel: [lines]}}."""
    files = {str(scratch.root / rel): rel for rel in rels}
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    log = Path(tempfile.mkstemp(suffix=".log")[1])
    print(f"tracing {len(test_files)} test files ({marker or 'all tests'}) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    status = run_pytest(scratch, [*(["-m", marker] if marker else []), "-p", "no:xdist", *test_files],
                        3600, [_Tracer(set(files), out)], log)
    data = json.loads(out.read_text()) if out.stat().st_size else {"times": {}, "lines": {}, "failed": -1}
    if status != "passed" or data["failed"]:
        sys.exit(f"the tests fail without any mutant ({status}); see {log}:\n" + log.read_text()[-3000:])
    print(f"  {len(data['times'])} tests in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    data["lines"] = {test: {files[f]: lines for f, lines in hit.items()} for test, hit in data["lines"].items()}
    return data


# ---- results and report ------------------------------------------------------------------------
def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict, modules=None) -> dict:
    """Write ``results`` of ``modules`` (all by default) over the kept ones (another run may be
    writing other modules); returns all the kept results."""
    kept = load_results()
    kept.update({rel: results[rel] for rel in (modules if modules is not None else results)})
    RESULTS.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    return kept


KINDS = ("equivalent", "invisible", "known")   # the last: a real survivor, left with its reason


def load_equivalents() -> dict[str, tuple[str, str]]:
    """id -> (kind, reason), from lines ``id  path:line  kind  reason`` (kind: equivalent, no
    behaviour changes; invisible, a change no user can see; known, a survivor left with why)."""
    out = {}
    if EQUIVALENTS.exists():
        for line in EQUIVALENTS.read_text().splitlines():
            parts = line.split(None, 3) if not line.startswith("#") else []
            if len(parts) == 4 and parts[2] in KINDS:
                out[parts[0]] = (parts[2], parts[3])
    return out


def score_of(mutants: dict, equivalents: dict) -> tuple[dict, float]:
    """Counts per status and the score (killed + timeout) / (mutants - equivalent - invisible)."""
    counts = {"killed": 0, "timeout": 0, "survived": 0, "no coverage": 0, "equivalent": 0}
    for ident, m in mutants.items():
        kind = equivalents.get(ident, ("",))[0]
        left = m["status"] in ("survived", "no coverage")
        status = "equivalent" if left and kind in ("equivalent", "invisible") else m["status"]
        counts[status] += 1
    judged = sum(counts.values()) - counts["equivalent"]
    return counts, (counts["killed"] + counts["timeout"]) / judged if judged else 1.0


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def write_report(results: dict) -> None:
    equivalents = load_equivalents()
    rows, details = [], []
    for rel in sorted(results):
        entry = results[rel]
        if not entry["mutants"]:   # being measured
            continue
        counts, score = score_of(entry["mutants"], equivalents)
        first = entry.get("first_score")
        rows.append(f"| {rel} | {len(entry['mutants'])} | {counts['killed'] + counts['timeout']} | "
                    f"{counts['survived']} | {counts['no coverage']} | {counts['equivalent']} | "
                    f"{'' if first is None else f'{first:.0%}'} | **{score:.0%}** | {entry.get('date', 'partial')} |")
        left = sorted(((m["line"], ident, m) for ident, m in entry["mutants"].items()
                       if m["status"] in ("survived", "no coverage")))
        if left:
            details.append(f"\n### {rel}\n")
            for line, ident, m in left:
                kind, why = equivalents.get(ident, ("", ""))
                tag = (f"{kind}: {why}" if kind in ("equivalent", "invisible")
                       else f"{m['status'].upper()}" + (f": {why}" if why else ""))
                details.append(f"- `{rel}:{line}` `{ident}` {m['what']}: `{m['before']}` -> `{m['after']}`"
                               f"  \n  {tag}")
    text = [
        "# Mutation testing: which wrong changes the tests notice",
        "",
        "Generated by `python bench/mutation.py PATH...` (see its docstring: the mutants, how tests are chosen, ",
        "the statuses); do not edit by hand. A survivor is either killed by a new test or listed in ",
        "`bench/mutation_equivalents.txt` with why it changes nothing a user can see (equivalent, invisible: ",
        "out of the score) or why it is left (known). Tests marked slow are not run unless `--slow`; ",
        "`first` is the module's score when it was first measured, before any test was added for it.",
        "",
        f"Machine of the last run: {cpu_name()}, one torch thread.",
        "",
        "| module | mutants | killed | survived | no coverage | equivalent | first | score | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "## Survivors",
        *details,
        "",
    ]
    REPORT.write_text("\n".join(text))


# ---- the command -------------------------------------------------------------------------------
def library_files(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        path = (REPO / p).resolve()
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            if f.name != "__init__.py" and "tests" not in f.parts and f.stat().st_size:
                out.append(rel)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="modules or folders of the library")
    parser.add_argument("--tests", nargs="*", help="test files to use instead of those importing the modules")
    parser.add_argument("--slow", action="store_true", help="also the tests marked slow")
    parser.add_argument("--max-test-seconds", type=float, default=5.0,
                        help="leave out of the mutants' runs the tests that took longer in the traced run, "
                             "unless no other test reaches the line (default 5; 0: no limit)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--again", action="store_true", help="ignore the kept results of these modules")
    parser.add_argument("--report", action="store_true", help="only rewrite docs/mutation.md")
    args = parser.parse_args(argv)
    results = load_results()
    if args.report or not args.paths:
        write_report(results)
        print(REPORT.read_text())
        return 0
    rels = library_files(args.paths)
    if args.list:
        for rel in rels:
            for m in mutants_of(REPO / rel):
                print(f"{rel}:{m.line} {m.id} {m.what}: {m.before}  ->  {m.after}")
        return 0

    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    import torch  # imported once here, forked into every run
    import torchvision  # noqa: F401
    import numpy  # noqa: F401
    import cv2  # noqa: F401
    import pycocotools.coco  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    torch.set_num_threads(1)

    tests_hash = tests_digest()
    marker = "" if args.slow else "not slow"
    setting = f"{tests_hash} {marker or 'all'} {args.max_test_seconds or 'no limit'}"
    todo: dict[str, list[Mutant]] = {}
    for rel in rels:
        source_hash = digest([rel])
        entry = results.get(rel)
        if args.again or entry is None or entry["source"] != source_hash:
            first = entry.get("first_score") if entry else None
            entry = results[rel] = {"source": source_hash, "mutants": {}, "first_score": first}
        mutants = mutants_of(REPO / rel)
        entry["mutants"] = {m.id: entry["mutants"][m.id] for m in mutants if m.id in entry["mutants"]}
        redo = [m for m in mutants if m.id not in entry["mutants"]
                or (entry["mutants"][m.id]["status"] in ("survived", "no coverage")
                    and entry["mutants"][m.id].get("tests") != setting)]
        if redo:
            todo[rel] = redo
        print(f"{rel}: {len(mutants)} mutants, {len(redo)} to run", file=sys.stderr)
    if not todo:
        write_report(results)
        return 0

    originals = {rel: (REPO / rel).read_text() for rel in todo}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM); the results so far are kept"))
    scratch = Scratch()
    try:
        preimport(scratch, [module_name(rel) for rel in todo])
        test_files = args.tests or tests_importing([module_name(rel) for rel in todo])
        key = digest([*todo, *test_files])   # the rest of the library moves coverage rarely: not in the key
        cached = TRACES / f"{key}{'-slow' if args.slow else ''}.json"
        if cached.exists():
            trace = json.loads(cached.read_text())
        else:
            trace = coverage(scratch, list(todo), test_files, marker)
            TRACES.mkdir(exist_ok=True)
            cached.write_text(json.dumps(trace))
        order = sorted(trace["times"], key=trace["times"].get)
        cap = args.max_test_seconds or float("inf")
        for rel, mutants in todo.items():
            entry = results[rel]
            module_tests = [t for t in order if rel in trace["lines"][t]]
            started = time.perf_counter()
            for n, m in enumerate(mutants, 1):
                tests = tests_for(m, rel, module_tests, trace["lines"])
                tests = [t for t in tests if trace["times"][t] <= cap] or tests
                if not tests:
                    status = "no coverage"
                else:
                    scratch.write(rel, m.source)
                    budget = 3 * sum(trace["times"][t] for t in tests) + 30
                    status = run_pytest(scratch, ["-p", "no:xdist", *tests], budget)
                    status = {"failed": "killed", "passed": "survived"}.get(status, status)
                    scratch.write(rel, originals[rel])
                record = {"status": status, "line": m.line, "what": m.what, "before": m.before, "after": m.after,
                          "tests": setting}
                entry["mutants"][m.id] = record
                if n % 10 == 0:
                    save_results(results, list(todo))
                mark = {"killed": ".", "timeout": "T", "survived": "S", "no coverage": "-"}.get(status, "E")
                print(mark, end="" if n % 50 else "\n", file=sys.stderr, flush=True)
                if status == "error":
                    print(f"\n{rel}:{m.line} {m.id}: pytest error", file=sys.stderr)
            counts, score = score_of(entry["mutants"], load_equivalents())
            if entry.get("first_score") is None:
                entry["first_score"] = score
            entry["date"] = datetime.date.today().isoformat()
            print(f"\n{rel}: score {score:.0%} {counts} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            write_report(save_results(results, list(todo)))
    finally:
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
