"""The rules, read from a revision's syntax tree: the revision is never imported or run, so one
that needs a database, its models or its settings lints all the same, and fast.

Only what a deploy runs is read: ``upgrade()`` and ``downgrade()`` (and ``upgrade_<engine>()``
of Alembic's multi-database template), with the module's own functions they call. Inside them
the rules look at what reaches the database — what is handed to an ``execute`` — and at ORM
sessions and loops over query results, which no linter of the offline SQL can see: a loop
renders no SQL at all.
"""

from __future__ import annotations

import ast
import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from backfill.lint import skeleton, sql
from backfill.lint.findings import Finding, Rule
from backfill.lint.skeleton import Subject, Work

ENTRY_POINT = re.compile(r"^(upgrade|downgrade)(_\w+)?$")
OUR_OPS = frozenset(
    {
        "create_backfill_tables",
        "drop_backfill_tables",
        "queue_backfill",
        "forget_backfill",
        "ensure_backfill_finished",
        "run_backfill",
        "add_not_null",
    }
)
"""The operations ``backfill.alembic_ops`` adds: the safe way, never flagged as data work."""
_OUR_TABLES = frozenset({"backfill_runs", "backfill_batches", "backfill_events"})
_EXECUTE = frozenset({"execute", "exec_driver_sql"})
_TEXT = frozenset({"text"})
_TEXT_WRAPPERS = frozenset({"bindparams", "columns", "execution_options", "format", "strip"})
_MODULES = frozenset({"sa", "sqlalchemy", "sql", "expression", "dml", "postgresql", "mysql", "sqlite", "dialects"})
_VERBS = frozenset({"update", "delete", "insert"})
_SESSIONS = frozenset({"Session", "sessionmaker", "scoped_session"})
_ROW_SOURCES = frozenset(
    {"execute", "exec_driver_sql", "query", "scalars", "fetchall", "fetchmany", "all", "yield_per", "partitions"}
    | {"mappings", "stream", "stream_scalars"}
)
_ORM_ROWS = frozenset({"query", "scalars"})
_SESSION_WRITES = frozenset({"add", "merge", "delete"})
_ANY_WRITES = frozenset({"commit", "flush", "add_all", "bulk_save_objects", "bulk_update_mappings"})
_TABLE_FACTORIES = frozenset({"table", "Table"})
_SQLALCHEMY_NAMES = frozenset({"update", "delete", "insert", "select", "func", "and_", "or_", "exists", "case"})


@dataclass(frozen=True)
class OpCall:
    """An operation ``upgrade()`` runs, with the names it mentions: what a finding of squawk on
    the offline SQL is pinned to (the call whose names its statement mentions most)."""

    line: int
    col: int
    statement_line: int
    name: str
    words: frozenset[str]

    @property
    def ours(self) -> bool:
        return self.name in OUR_OPS


@dataclass(frozen=True)
class Revision:
    """What one file holds: its revision id, the findings of the rules (before suppression)
    and the operations of its ``upgrade()``."""

    revision: str | None
    findings: tuple[Finding, ...]
    calls: tuple[OpCall, ...]
    upgrade_line: int


def check(path: str, source: str) -> Revision:
    """Apply the rules to one file's source; raises ``SyntaxError`` when it does not parse."""
    return _Module(path, ast.parse(source, filename=path)).check()


def revision_id(tree: ast.Module) -> str | None:
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        named = any(isinstance(t, ast.Name) and t.id == "revision" for t in targets)
        if named and isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
    return None


def _method(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return f"{_dotted(node.func)}()"
    return "?"


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _is_module(node: ast.AST) -> bool:
    """``sa``, ``sqlalchemy.sql.expression``, ``postgresql``: where ``update()`` is a function."""
    root = _root(node)
    return isinstance(root, ast.Name) and root.id in _MODULES and not isinstance(node, ast.Call)


def _string(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _argument(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _assigned(body: list[ast.stmt] | ast.AST) -> dict[str, ast.expr]:
    """What each name was last assigned: a revision is straight-line code, so that is what a
    name holds where it is used, nearly always."""
    nodes = [n for s in body for n in ast.walk(s)] if isinstance(body, list) else list(ast.walk(body))
    values: dict[str, ast.expr] = {}
    for node in nodes:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and isinstance(node.target, ast.Name):
            if node.value is not None:
                values[node.target.id] = node.value
        elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            values[node.optional_vars.id] = node.context_expr
    return values


@dataclass(frozen=True)
class _Core:
    verb: str
    statement: ast.expr
    table: ast.expr | None
    columns: tuple[str, ...]
    select: ast.expr | None


class _Module:
    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.tree = tree
        self.functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        self.values = _assigned([s for s in tree.body if isinstance(s, ast.Assign | ast.AnnAssign)])
        self.models = dict(self._models())
        self.findings: list[Finding] = []
        self.calls: list[OpCall] = []
        self.queued: list[tuple[str | None, ast.Call]] = []
        self.ensured: list[tuple[str | None, ast.Call, ast.stmt]] = []

    def _models(self) -> Iterator[tuple[str, str]]:
        """ORM classes declared in the revision, with their table's name (``__tablename__``)."""
        for node in self.tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for statement in node.body:
                if isinstance(statement, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in ("__tablename__", "__table__") for t in statement.targets
                ):
                    value = statement.value
                    if isinstance(value, ast.Call) and _method(value) in _TABLE_FACTORIES and value.args:
                        value = value.args[0]
                    name = _string(value)
                    if name:
                        yield node.name, name

    def _contexts(self) -> dict[str, tuple[bool, bool]]:
        """Each function a deploy runs: whether an upgrade reaches it, whether a downgrade does."""
        reached: dict[str, tuple[bool, bool]] = {}
        for root in self.functions:
            if not ENTRY_POINT.match(root):
                continue
            upgrade = root.startswith("upgrade")
            stack, seen = [root], set()
            while stack:
                name = stack.pop()
                if name in seen:
                    continue
                seen.add(name)
                up, down = reached.get(name, (False, False))
                reached[name] = (up or upgrade, down or not upgrade)
                for node in ast.walk(self.functions[name]):
                    if (
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Name)
                        and node.func.id in self.functions
                    ):
                        stack.append(node.func.id)
        return reached

    def check(self) -> Revision:
        for name, (upgrade, downgrade) in self._contexts().items():
            _Function(self, self.functions[name], upgrade=upgrade, downgrade_only=downgrade and not upgrade).run()
        self._queue_and_ensure()
        entry = self.functions.get("upgrade")
        return Revision(
            revision_id(self.tree),
            tuple(sorted(self.findings, key=lambda f: (f.line, f.col, f.code))),
            tuple(self.calls),
            entry.lineno if entry is not None else 1,
        )

    def _queue_and_ensure(self) -> None:
        """A backfill queued and required finished by the same ``upgrade()``: the workers never
        see it. A name that is not a literal may be the same one, so it counts."""
        queued = {name for name, _ in self.queued}
        for name, call, statement in self.ensured:
            if not queued or (name is not None and None not in queued and name not in queued):
                continue
            shown = name or "NAME"
            rule = Rule.QUEUE_AND_ENSURE
            self.findings.append(
                Finding(
                    self.path,
                    call.lineno,
                    call.col_offset + 1,
                    rule.code,
                    f"backfill {shown!r} queued and required finished in one revision: the workers never get to "
                    "run it, the migration runs it inline (holding the deploy) or fails on a large table",
                    f"keep op.queue_backfill({shown!r}) here and move op.ensure_backfill_finished({shown!r}) to "
                    "the next revision, deployed once the workers finished it (skeleton below)",
                    skeleton.split_revisions(shown),
                    statement.lineno,
                )
            )


@dataclass
class _Function:
    """One function's body, walked statement by statement, so that each finding knows the
    statement it is in (where a suppression comment goes)."""

    module: _Module
    node: ast.FunctionDef | ast.AsyncFunctionDef
    upgrade: bool
    downgrade_only: bool
    values: dict[str, ast.expr] = field(default_factory=dict)
    batches: dict[str, str | None] = field(default_factory=dict)
    subjects: list[Subject] = field(default_factory=list)
    sessions: list[tuple[ast.Call, ast.stmt]] = field(default_factory=list)

    def run(self) -> None:
        self.values = {**self.module.values, **_assigned(self.node)}
        for node in ast.walk(self.node):
            if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
                context = node.context_expr
                if isinstance(context, ast.Call) and _method(context) == "batch_alter_table":
                    self.batches[node.optional_vars.id] = _string(_argument(context, 0, "table_name"))
        self._block(self.node.body, in_loop=False)
        for call, statement in self.sessions:
            subject = self.subjects[0] if self.subjects else self._session_subject()
            self._data_work(
                Rule.ORM_SESSION,
                call,
                statement,
                "ORM Session on the migration's connection: every row it loads becomes an object in memory, "
                "changed inside the deploy's transaction",
                subject,
            )

    def resolve(self, node: ast.AST, depth: int = 0) -> ast.AST:
        while isinstance(node, ast.Name) and node.id in self.values and depth < 8:
            node, depth = self.values[node.id], depth + 1
        return node

    def _block(self, statements: list[ast.stmt], *, in_loop: bool) -> None:
        for statement in statements:
            self._statement(statement, in_loop=in_loop)

    def _statement(self, statement: ast.stmt, *, in_loop: bool) -> None:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            self._block(statement.body, in_loop=in_loop)
            return
        if isinstance(statement, ast.ClassDef):
            return
        if isinstance(statement, ast.For | ast.AsyncFor):
            self._expressions(statement.iter, statement, in_loop=in_loop)
            flagged = not in_loop and self._row_loop(statement)
            self._block(statement.body, in_loop=in_loop or flagged)
            self._block(statement.orelse, in_loop=in_loop)
            return
        for child in ast.iter_child_nodes(statement):
            if isinstance(child, ast.stmt):
                self._statement(child, in_loop=in_loop)
            elif isinstance(child, ast.excepthandler | ast.match_case):
                for part in ast.iter_child_nodes(child):
                    if isinstance(part, ast.stmt):
                        self._statement(part, in_loop=in_loop)
                    elif isinstance(part, ast.expr):
                        self._expressions(part, statement, in_loop=in_loop)
            elif isinstance(child, ast.withitem):
                self._expressions(child.context_expr, statement, in_loop=in_loop)
            elif isinstance(child, ast.expr):
                self._expressions(child, statement, in_loop=in_loop)

    def _expressions(self, expression: ast.expr, statement: ast.stmt, *, in_loop: bool) -> None:
        for node in ast.walk(expression):
            if isinstance(node, ast.Call):
                self._call(node, statement, in_loop=in_loop)

    def _is_op(self, node: ast.AST) -> bool:
        return _dotted(node) in ("op", "alembic.op")

    def _call(self, call: ast.Call, statement: ast.stmt, *, in_loop: bool) -> None:
        method = _method(call)
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        on_op = receiver is not None and self._is_op(receiver)
        on_batch = isinstance(receiver, ast.Name) and receiver.id in self.batches
        if self.upgrade and method and (on_op or on_batch) and method != "batch_alter_table":
            self._record(
                call, statement, method, self.batches.get(receiver.id) if isinstance(receiver, ast.Name) else None
            )
        if method in _EXECUTE and call.args:
            self._executed(call, statement, in_loop=in_loop)
        elif method in _SESSIONS:
            self.sessions.append((call, statement))
        elif method == "alter_column" and self.upgrade and receiver is not None:
            self._alter_column(call, statement, receiver)
        elif on_op and self.upgrade and method == "queue_backfill":
            self.module.queued.append((self._literal(_argument(call, 0, "name")), call))
        elif on_op and self.upgrade and method == "ensure_backfill_finished":
            self.module.ensured.append((self._literal(_argument(call, 0, "name")), call, statement))
        elif method in ("update", "delete") and receiver is not None and self._query_chain(receiver) and not in_loop:
            table = self._table_name(receiver)
            column = self._dict_keys(call.args[0]) if call.args else ()
            self._data_work(
                Rule.CORE_DATA_WORK,
                call,
                statement,
                f"ORM query {method}() on {table or 'a table'} run by the migration: one statement over every "
                "row, holding their locks until the deploy commits, and starting over after any failure",
                self._placeholder(table, column[0] if column else None, f"the revision's query {method}()"),
            )

    def _record(self, call: ast.Call, statement: ast.stmt, method: str, batch_table: str | None) -> None:
        words = {w.lower() for n in ast.walk(call) if (w := _string(n))}
        if batch_table:
            words.add(batch_table.lower())
        if method in OUR_OPS and method != "add_not_null":
            words |= _OUR_TABLES
        self.module.calls.append(OpCall(call.lineno, call.col_offset + 1, statement.lineno, method, frozenset(words)))

    def _literal(self, node: ast.AST | None) -> str | None:
        return _string(self.resolve(node)) if node is not None else None

    def _text(self, node: ast.AST, depth: int = 0) -> str | None:
        """The SQL a node spells when it is text: a literal, an f-string, a concatenation, or
        ``text(...)`` of one; a name is followed to what it was assigned."""
        node = self.resolve(node)
        if depth > 8:
            return None
        if (value := _string(node)) is not None:
            return value
        if isinstance(node, ast.JoinedStr):
            return "".join(
                _string(part) or ("{" + ast.unparse(part.value) + "}" if isinstance(part, ast.FormattedValue) else "")
                for part in node.values
            )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self._text(node.left, depth + 1), self._text(node.right, depth + 1)
            if left is None and right is None:
                return None
            return (left if left is not None else "{...}") + (right if right is not None else "{...}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return self._text(node.left, depth + 1)
        if isinstance(node, ast.Call):
            method = _method(node)
            if method in _TEXT and node.args:
                return self._text(node.args[0], depth + 1)
            if method == "dedent" and node.args:
                return self._text(node.args[0], depth + 1)
            if method in _TEXT_WRAPPERS and isinstance(node.func, ast.Attribute):
                return self._text(node.func.value, depth + 1)
        return None

    def _core(self, node: ast.AST) -> _Core | None:
        """A Core ``update()``/``delete()``/``insert().from_select()`` chain, in either spelling:
        ``update(players)...`` or ``players.update()...``. ``insert().values()`` writes given
        rows, not rows derived from the table's own, and is not a backfill."""
        statement = self.resolve(node)
        if not isinstance(statement, ast.expr):
            return None
        chain: list[ast.Call] = []
        current: ast.AST = statement
        for _ in range(40):
            if not isinstance(current, ast.Call):
                return None
            func = current.func
            if isinstance(func, ast.Name):
                if func.id in _VERBS:
                    return self._core_of(func.id, statement, _argument(current, 0, "table"), chain)
                return None
            if not isinstance(func, ast.Attribute):
                return None
            if func.attr in _VERBS:
                table = _argument(current, 0, "table") if _is_module(func.value) else func.value
                return self._core_of(func.attr, statement, table, chain)
            chain.append(current)
            current = self.resolve(func.value)
        return None

    def _core_of(self, verb: str, statement: ast.expr, table: ast.expr | None, chain: list[ast.Call]) -> _Core | None:
        methods = {_method(c): c for c in chain}
        select = None
        if verb == "insert":
            if "from_select" not in methods:
                return None
            select = _argument(methods["from_select"], 1, "select")
        columns: list[str] = []
        for call in chain:
            if _method(call) in ("values", "ordered_values"):
                columns.extend(k.arg for k in call.keywords if k.arg)
                for argument in call.args:
                    columns.extend(self._dict_keys(argument))
        return _Core(verb, statement, table, tuple(columns), select)

    def _dict_keys(self, node: ast.AST) -> tuple[str, ...]:
        node = self.resolve(node)
        if not isinstance(node, ast.Dict):
            return ()
        keys: list[str] = []
        for key in node.keys:
            if (name := _string(key)) is not None:
                keys.append(name)
            elif isinstance(key, ast.Attribute):
                keys.append(key.attr)
        return tuple(keys)

    def _query_chain(self, node: ast.AST) -> bool:
        current = self.resolve(node)
        while isinstance(current, ast.Call | ast.Attribute):
            if isinstance(current, ast.Call):
                if _method(current) == "query":
                    return True
                current = self.resolve(current.func.value) if isinstance(current.func, ast.Attribute) else current.func
            else:
                if current.attr == "query":
                    return True
                current = self.resolve(current.value)
        return False

    def _table_name(self, node: ast.AST | None, depth: int = 0) -> str | None:
        """The table an expression stands for: ``players`` (a ``Table`` or ``table()``),
        ``Player`` (a model declared in the revision), ``session.query(Player)...``."""
        if node is None or depth > 8:
            return None
        if isinstance(node, ast.Name) and node.id in self.module.models:
            return self.module.models[node.id]
        resolved = self.resolve(node)
        if (name := _string(resolved)) is not None:
            return name
        if isinstance(resolved, ast.Call):
            method = _method(resolved)
            if method in _TABLE_FACTORIES and resolved.args:
                return _string(resolved.args[0])
            if method in ("query", "select") and resolved.args:
                return self._table_name(resolved.args[0], depth + 1)
            if isinstance(resolved.func, ast.Attribute):
                return self._table_name(resolved.func.value, depth + 1)
            return None
        if isinstance(resolved, ast.Name):
            return resolved.id if resolved.id == resolved.id.lower() else None
        if isinstance(resolved, ast.Attribute):
            if resolved.attr in ("__table__", "query"):
                return self._table_name(resolved.value, depth + 1)
            return resolved.attr if resolved.attr == resolved.attr.lower() else None
        return None

    def _executed(self, call: ast.Call, statement: ast.stmt, *, in_loop: bool) -> None:
        argument = call.args[0]
        text = self._text(argument)
        if text is not None:
            for found in sql.read(text):
                if found.kind is sql.Kind.NOT_NULL and self.upgrade:
                    self._not_null(call, statement, found.table, found.columns[0] if found.columns else None)
                elif found.kind.is_data_work and not in_loop:
                    self._data_work(
                        Rule.SQL_DATA_WORK,
                        call,
                        statement,
                        f"{found.kind.value} on {found.table or 'a table'} inside the migration: one statement over "
                        "every row, holding their locks until the deploy commits, and starting over after any failure",
                        _sql_subject(found),
                    )
                    return
            return
        core = self._core(argument)
        if core is not None and not in_loop:
            table = self._table_name(core.select if core.select is not None else core.table)
            self._data_work(
                Rule.CORE_DATA_WORK,
                call,
                statement,
                f"SQLAlchemy {core.verb}(){'.from_select()' if core.select is not None else ''} on {table or 'a table'} "
                "run by the migration: one statement over every row, holding their locks until the deploy "
                "commits, and starting over after any failure",
                self._core_subject(core, table),
            )

    def _core_subject(self, core: _Core, table: str | None) -> Subject:
        """The Core statement itself, limited to one batch with ``batch.where(<key>)``."""
        column = core.columns[0] if core.columns else None
        label = "delete" if core.verb == "delete" else None
        fills = core.verb == "update" and column is not None and self._fills(core, column)
        key_owner = self._key_owner(core.select if core.select is not None else core.table)
        if key_owner is None:
            subject = self._placeholder(table, column, f"the revision's {core.verb}()")
            return replace(subject, fills=fills, label=label, pending=subject.pending if fills else None)
        model = self._is_model(key_owner)
        key = f"{key_owner}.id" if model else f"{key_owner}.c.id"
        limit = f"batch.where({key})"
        statement = copy.deepcopy(core.statement)
        source = ast.unparse(statement)
        if fills and f"{column}.is_(None)" not in source:
            limit += f", {key_owner}.{'' if model else 'c.'}{column}.is_(None)"
        if core.select is not None:
            for node in ast.walk(statement):
                if isinstance(node, ast.Call) and _method(node) == "from_select":
                    limited = ast.parse(f"({ast.unparse(core.select)}).where({limit})", mode="eval").body
                    if len(node.args) > 1:
                        node.args[1] = limited
                    for keyword in node.keywords:
                        if keyword.arg == "select":
                            keyword.value = limited
            code = ast.unparse(statement)
        else:
            code = f"{source}.where({limit})"
        used = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}
        modules = tuple(f"import sqlalchemy as {name}" for name in sorted(used & {"sa"}))
        tables = tuple(sorted(n for n in used if n not in _MODULES and n not in _SQLALCHEMY_NAMES and n != "batch"))
        work = Work(core=code, imports=tuple(sorted(used & _SQLALCHEMY_NAMES)), modules=modules, tables=tables)
        pending = f"{column} IS NULL" if fills else None
        return Subject(table, column, pending, work, f"the revision's {core.verb}()", fills=fills, label=label)

    def _fills(self, core: _Core, column: str) -> bool:
        """Whether the value a Core ``.values(column=...)`` sets comes from elsewhere than the
        column itself, and is not None."""
        for node in ast.walk(core.statement):
            if not (isinstance(node, ast.Call) and _method(node) in ("values", "ordered_values")):
                continue
            for keyword in node.keywords:
                if keyword.arg != column:
                    continue
                value = keyword.value
                if isinstance(value, ast.Constant) and value.value is None:
                    return False
                return not any(isinstance(n, ast.Attribute) and n.attr == column for n in ast.walk(value))
        return True

    def _key_owner(self, node: ast.AST | None) -> str | None:
        """The source text of what the key column hangs off: ``players`` in ``players.c.id``,
        ``Player`` in ``Player.id``; for a ``SELECT``, the first table whose column it names."""
        if isinstance(node, ast.Name | ast.Attribute):
            return ast.unparse(node)
        for child in ast.walk(node) if node is not None else ():
            if not isinstance(child, ast.Attribute) or not isinstance(child.value, ast.Name):
                continue
            if child.attr == "c" or self._is_model(child.value.id):
                return child.value.id
        return None

    def _is_model(self, name: str) -> bool:
        return name in self.module.models or (name[:1].isupper() and "." not in name)

    def _placeholder(self, table: str | None, column: str | None, origin: str) -> Subject:
        """A subject whose work must be written by hand: one set-based statement per batch."""
        owner = table or "TODO_table"
        if column:
            work = f"UPDATE {owner} SET {column} = TODO WHERE {owner}.id BETWEEN :first AND :last AND {owner}.{column} IS NULL"
        else:
            work = f"TODO: the work for the rows of {owner} WHERE {owner}.id BETWEEN :first AND :last"
        return Subject(table, column, f"{column} IS NULL" if column else None, Work(sql=work), origin)

    def _session_subject(self) -> Subject:
        table = None
        for node in ast.walk(self.node):
            if isinstance(node, ast.Call) and _method(node) == "query" and node.args:
                table = self._table_name(node.args[0])
                if table:
                    break
        return self._placeholder(table, None, "the revision's ORM work as one statement")

    def _data_work(self, rule: Rule, call: ast.AST, statement: ast.stmt, message: str, subject: Subject) -> None:
        subject = replace(subject, downgrade=self.downgrade_only)
        self.subjects.append(subject)
        name = subject.name
        if subject.downgrade:
            fix = (
                f"move it into a backfill ({name}) and op.run_backfill({name!r}) here: keyset batches, "
                "resumable, instead of one pass (skeleton below)"
            )
        else:
            then = (
                f" + op.add_not_null({subject.table!r}, {subject.column!r})"
                if subject.table and subject.column and subject.fills
                else ""
            )
            fix = (
                f"move it into a backfill ({name}): op.queue_backfill({name!r}) in this revision, "
                f"op.ensure_backfill_finished({name!r}){then} in the next (skeleton below)"
            )
        self.module.findings.append(
            Finding(
                self.module.path,
                getattr(call, "lineno", statement.lineno),
                getattr(call, "col_offset", statement.col_offset) + 1,
                rule.code,
                message,
                fix,
                skeleton.data_work(subject),
                statement.lineno,
            )
        )

    def _not_null(self, call: ast.AST, statement: ast.stmt, table: str | None, column: str | None) -> None:
        where = f"{table or '?'}.{column or '?'}"
        self.module.findings.append(
            Finding(
                self.module.path,
                getattr(call, "lineno", statement.lineno),
                getattr(call, "col_offset", statement.col_offset) + 1,
                Rule.UNSAFE_NOT_NULL.code,
                f"NOT NULL set on the existing column {where} without op.add_not_null: a full scan under an "
                "exclusive lock that blocks every writer, and a failure at the end if one NULL is left",
                f"op.ensure_backfill_finished(NAME) then op.add_not_null({table or 'TABLE'!r}, "
                f"{column or 'COLUMN'!r}): a check validated without blocking writers, refused while a NULL is left "
                "(skeleton below)",
                skeleton.not_null(table, column),
                statement.lineno,
            )
        )

    def _alter_column(self, call: ast.Call, statement: ast.stmt, receiver: ast.AST) -> None:
        """NOT NULL on a column of a table the same function creates is instant (the table is
        empty), so only the other tables count."""
        nullable = next((k.value for k in call.keywords if k.arg == "nullable"), None)
        if not (isinstance(nullable, ast.Constant) and nullable.value is False):
            return
        if self._is_op(receiver):
            table = self._literal(_argument(call, 0, "table_name"))
            column = self._literal(_argument(call, 1, "column_name"))
        else:
            table = self.batches.get(receiver.id) if isinstance(receiver, ast.Name) else None
            column = self._literal(_argument(call, 0, "column_name"))
        if table is not None and table in self._created_tables():
            return
        self._not_null(call, statement, table, column)

    def _created_tables(self) -> set[str]:
        return {
            name
            for node in ast.walk(self.node)
            if isinstance(node, ast.Call) and _method(node) == "create_table"
            if (name := self._literal(_argument(node, 0, "table_name"))) is not None
        }

    def _row_loop(self, loop: ast.For | ast.AsyncFor) -> bool:
        """A loop over query results that changes rows (or walks ORM objects): the rows go
        through Python one by one, each a round trip, all under the deploy's transaction."""
        if not self._rows(loop.iter):
            return False
        orm = self._orm_rows(loop.iter)
        writes = self._writes(loop)
        if not (writes or orm):
            return False
        subject = self._loop_subject(loop)
        what = "writing each row" if writes else "loading every row as an ORM object"
        self._data_work(
            Rule.ROW_LOOP,
            loop,
            loop,
            f"row-by-row loop over query results, {what}: one round trip per row, every changed row locked "
            "until the deploy commits",
            subject,
        )
        return True

    def _chain(self, node: ast.AST) -> Iterator[ast.AST]:
        current = self.resolve(node)
        for _ in range(40):
            yield current
            if isinstance(current, ast.Call):
                current = self.resolve(current.func)
            elif isinstance(current, ast.Attribute):
                current = self.resolve(current.value)
            else:
                return

    def _rows(self, node: ast.AST) -> bool:
        for link in self._chain(node):
            if isinstance(link, ast.Attribute) and link.attr in _ROW_SOURCES | {"query"}:
                return True
            if isinstance(link, ast.Name) and link.id in _ROW_SOURCES - {"all"}:
                return True
        return False

    def _orm_rows(self, node: ast.AST) -> bool:
        return any(isinstance(link, ast.Attribute) and link.attr in _ORM_ROWS for link in self._chain(node))

    def _is_session(self, node: ast.AST) -> bool:
        value = self.resolve(node)
        if isinstance(value, ast.Call):
            if _method(value) in _SESSIONS:
                return True
            factory = self.resolve(value.func)
            return isinstance(factory, ast.Call) and _method(factory) in _SESSIONS
        return False

    def _writes(self, loop: ast.For | ast.AsyncFor) -> bool:
        targets = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
        for node in (n for statement in loop.body for n in ast.walk(statement)):
            if isinstance(node, ast.Assign | ast.AugAssign):
                assigned = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in assigned:
                    root = _root(target)
                    if isinstance(target, ast.Attribute) and isinstance(root, ast.Name) and root.id in targets:
                        return True
            if not isinstance(node, ast.Call):
                continue
            method = _method(node)
            receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
            if method in _ANY_WRITES and receiver is not None and not self._is_op(receiver):
                return True
            if method in _SESSION_WRITES and receiver is not None and self._is_session(receiver):
                return True
            if method in _EXECUTE and node.args:
                text = self._text(node.args[0])
                if text is not None:
                    if any(s.kind.is_data_work for s in sql.read(text)):
                        return True
                elif self._core(node.args[0]) is not None or len(node.args) > 1:
                    return True
        return False

    def _loop_subject(self, loop: ast.For | ast.AsyncFor) -> Subject:
        targets = {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}
        column: str | None = None
        for node in (n for statement in loop.body for n in ast.walk(statement)):
            if isinstance(node, ast.Call) and _method(node) in _EXECUTE and node.args:
                text = self._text(node.args[0])
                found = [s for s in sql.read(text) if s.kind.is_data_work] if text else []
                if found:
                    first = found[0]
                    return self._placeholder(
                        first.table, first.columns[0] if first.columns else None, "the revision's row-by-row loop"
                    )
                core = self._core(node.args[0])
                if core is not None:
                    table = self._table_name(core.table)
                    return self._placeholder(
                        table, core.columns[0] if core.columns else None, "the revision's row-by-row loop"
                    )
            if column is None and isinstance(node, ast.Assign):
                for target in node.targets:
                    root = _root(target)
                    if isinstance(target, ast.Attribute) and isinstance(root, ast.Name) and root.id in targets:
                        column = target.attr
        return self._placeholder(self._iterated_table(loop.iter), column, "the revision's row-by-row loop")

    def _iterated_table(self, node: ast.AST) -> str | None:
        for link in self._chain(node):
            if isinstance(link, ast.Call) and link.args:
                method = _method(link)
                if method in ("query", "scalars", "execute", "exec_driver_sql"):
                    text = self._text(link.args[0])
                    if text is not None:
                        return sql.source_table(text)
                    argument = self.resolve(link.args[0])
                    if isinstance(argument, ast.Call) and _method(argument) == "select" and argument.args:
                        return self._table_name(argument.args[0])
                    return self._table_name(argument)
        return None


def _sql_subject(statement: sql.Statement) -> Subject:
    """A SQL statement made one batch's: the key range (and, for an UPDATE that fills a column,
    the rows still NULL) added to its own condition, which is kept as ``pending`` when the
    table alone can answer it."""
    owner = statement.alias or statement.table or "TODO_table"
    column = statement.columns[0] if statement.columns else None
    usable = statement.where if statement.where and not statement.joins and not statement.has_parameters else None
    condition = f"{owner}.id BETWEEN :first AND :last"
    pending: str | None = usable
    label: str | None = None
    if statement.kind is sql.Kind.UPDATE and column and statement.fills:
        condition += f" AND {owner}.{column} IS NULL"
        pending = f"{column} IS NULL" + (f" AND ({usable})" if usable else "")
    elif statement.kind is sql.Kind.DELETE:
        label = "delete"
    elif statement.kind is sql.Kind.INSERT_SELECT:
        pending, label = None, f"to_{statement.target}" if statement.target else "insert"
    work = Work(sql=sql.with_condition(statement.text, condition)) if statement.kind is not sql.Kind.MERGE else Work()
    origin = f"the revision's {statement.kind.value}"
    return Subject(statement.table, column, pending, work, origin, fills=statement.fills, label=label)
