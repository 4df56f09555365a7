"""Load a flow from YAML and refuse it, with every problem at once, if it cannot run.

The YAML is composed (not just parsed) so each value keeps its line: an error says
``card-service.yaml:31: node 'main': digits.9: unknown target 'emergncy'``. Checks:
node schemas (pydantic), unknown node types, duplicate keys (PyYAML would silently
keep the last one), a missing or unknown start, unknown targets, unreachable nodes,
loops that never wait for the caller (they would spin until the step guard), and
prompts missing for any of the flow's languages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from yaml.constructor import ConstructorError, SafeConstructor

from ivr.audio import SHIPPED_PROMPTS, PromptSet
from ivr.nodes import NODE_TYPES, SERVICE_OF, NodeId, _Node
from ivr.nodes import Language as LanguageCode

MAX_TEXT = 256 * 1024  # a flow is a page of YAML, not a data set
MAX_VALUES = 20_000  # alias bombs expand to millions; refuse early
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Problem:
    message: str
    node: str | None = None
    line: int | None = None  # 1-based

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        what = f"node {self.node!r}: " if self.node else ""
        return f"{where}: {what}{self.message}"


class FlowError(ValueError):
    """The flow cannot run; ``problems`` lists every reason, each with node and line."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


@dataclass(frozen=True)
class Flow:
    id: str
    start: str
    language: str
    languages: tuple[str, ...]
    nodes: Mapping[str, _Node]
    prompts: PromptSet
    source: str = "<flow>"
    description: str = ""
    lines: Mapping[str, int] = field(default_factory=dict)  # node id -> line

    def services_needed(self) -> set[str]:
        """The IvrServices fields this flow calls."""
        kinds = {getattr(n, "type", "") for n in self.nodes.values()}
        return {SERVICE_OF[k] for k in kinds if k in SERVICE_OF}


class _FlowDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    description: str = ""
    start: NodeId
    language: LanguageCode
    languages: list[LanguageCode] = Field(default_factory=list)
    nodes: dict[str, Any] = Field(min_length=1)


# --- YAML with lines -------------------------------------------------------------


class _Lines:
    """Plain data from a composed YAML tree, remembering the line of every path."""

    def __init__(self) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        self.problems: list[Problem] = []
        self._constructor = SafeConstructor()
        self._count = 0

    def build(self, node: yaml.Node, path: tuple[str, ...] = ()) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            raise _TooBig
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    self.problems.append(
                        Problem("mapping keys must be plain values", line=_line(key_node))
                    )
                    continue
                if key in out:
                    self.problems.append(
                        Problem(
                            f"key {'.'.join((*path, str(key)))!r} is given twice",
                            node=path[1] if len(path) > 1 and path[0] == "nodes" else None,
                            line=_line(key_node),
                        )
                    )
                    continue
                sub = (*path, str(key))
                self.lines[sub] = _line(key_node)
                out[key] = self.build(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, str(i))) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node  # a complex key: reported by the caller
        return self._constructor.construct_object(node, deep=True)

    def line_of(self, path: tuple[str, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


class _TooBig(Exception):
    pass


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _compose(text: str, source: str) -> tuple[Any, _Lines]:
    if len(text) > MAX_TEXT:
        raise FlowError(source, [Problem(f"the flow is larger than {MAX_TEXT} bytes")])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise FlowError(source, [Problem(f"not valid YAML: {exc.problem}", line=line)]) from exc
    except yaml.YAMLError as exc:
        raise FlowError(source, [Problem(f"not valid YAML: {exc}")]) from exc
    if root is None:
        raise FlowError(source, [Problem("the flow is empty")])
    lines = _Lines()
    try:
        data = lines.build(root)
    except _TooBig:
        raise FlowError(source, [Problem("the flow expands to too many values")]) from None
    except ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise FlowError(source, [Problem(f"not valid YAML: {exc.problem}", line=line)]) from exc
    return data, lines


# --- validation ------------------------------------------------------------------


def _pydantic_problems(
    exc: ValidationError, lines: _Lines, prefix: tuple[str, ...], node: str | None
) -> Iterator[Problem]:
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc)
        if err["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}"
        elif err["type"] == "missing":
            message = f"{where}: required field missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            message = f"{where}: {msg}" if where else msg
        yield Problem(message, node=node, line=lines.line_of((*prefix, *loc)))


def _check_nodes(raw: dict[Any, Any], lines: _Lines) -> tuple[dict[str, _Node], list[Problem]]:
    nodes: dict[str, _Node] = {}
    problems: list[Problem] = []
    for key, body in raw.items():
        node_id = str(key)
        path = ("nodes", node_id)
        line = lines.line_of(path)
        if not isinstance(key, str) or not _ID.fullmatch(key):
            problems.append(
                Problem(
                    "a node id is letters, digits, '_' or '-', starting with a letter",
                    node=node_id,
                    line=line,
                )
            )
            continue
        if not isinstance(body, dict):
            problems.append(Problem("a node is a mapping with a type", node=node_id, line=line))
            continue
        kind = body.get("type")
        model = NODE_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            problems.append(
                Problem(
                    f"unknown node type {kind!r}; known: {', '.join(NODE_TYPES)}",
                    node=node_id,
                    line=lines.line_of((*path, "type")),
                )
            )
            continue
        try:
            nodes[node_id] = model.model_validate(body)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, lines, path, node_id))
    return nodes, problems


def _raw_targets(body: Any) -> dict[str, str]:
    """Where a node that failed its schema seems to lead, so its successors are not
    reported unreachable on top of the real problem."""
    if not isinstance(body, dict):
        return {}
    found = {
        str(k): v
        for k, v in body.items()
        if isinstance(v, str) and (k == "next" or str(k).startswith("on_"))
    }
    digits = body.get("digits")
    if isinstance(digits, dict):
        found.update({f"digits.{k}": v for k, v in digits.items() if isinstance(v, str)})
    return found


def _graph_problems(
    start: str, nodes: dict[str, _Node], raw: dict[Any, Any], lines: _Lines
) -> list[Problem]:
    problems: list[Problem] = []
    all_ids = {str(k) for k in raw}
    edges: dict[str, list[str]] = {}
    for key, body in raw.items():
        node_id = str(key)
        node = nodes.get(node_id)
        if node is None:  # its own problem is reported already
            edges[node_id] = [t for t in _raw_targets(body).values() if t in all_ids]
            continue
        edges[node_id] = []
        for label, target in node.targets().items():
            if target not in all_ids:
                problems.append(
                    Problem(
                        f"{label}: unknown target {target!r}",
                        node=node_id,
                        line=lines.line_of(("nodes", node_id, *label.split("."))),
                    )
                )
            else:
                edges[node_id].append(target)
    if start not in all_ids:
        problems.append(Problem(f"start: unknown node {start!r}", line=lines.line_of(("start",))))
        return problems
    seen = {start}
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    for node_id in sorted(all_ids - seen, key=lambda n: lines.line_of(("nodes", n)) or 0):
        problems.append(
            Problem(
                f"unreachable from the start node {start!r}",
                node=node_id,
                line=lines.line_of(("nodes", node_id)),
            )
        )
    for cycle in _cycles_without_input(nodes, edges):
        head = cycle[0]
        problems.append(
            Problem(
                "loop without caller input: " + " -> ".join([*cycle, head]),
                node=head,
                line=lines.line_of(("nodes", head)),
            )
        )
    return problems


def _cycles_without_input(nodes: dict[str, _Node], edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of nodes that never wait for input."""
    quiet = {n for n, node in nodes.items() if not node.WAITS_FOR_INPUT}
    graph = {n: [m for m in edges.get(n, []) if m in quiet] for n in quiet}
    found: list[list[str]] = []
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        # iterative DFS keeping the current path, so a back edge names the loop
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        path.append(root)
        on_path.add(root)
        while stack:
            current, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(current)
                done.add(current)
                continue
            if child in on_path:
                loop = path[path.index(child) :]
                if not any(set(loop) == set(f) for f in found):
                    found.append(loop)
            elif child not in done:
                stack.append((child, iter(graph[child])))
                path.append(child)
                on_path.add(child)
    return found


def _prompt_problems(
    nodes: dict[str, _Node], languages: tuple[str, ...], prompts: PromptSet, lines: _Lines
) -> list[Problem]:
    problems: list[Problem] = []
    for node_id, node in nodes.items():
        wanted: list[tuple[str, str, str]] = [  # (label, prompt, language)
            (label, name, lang)
            for label, names in node.prompt_fields().items()
            for name in names
            for lang in languages
        ]
        wanted += [
            (f"numbers ({lang})", name, lang)
            for lang in languages
            for name in node.number_prompts(lang)
        ]
        missing: dict[tuple[str, str], list[str]] = {}
        for label, name, lang in wanted:
            if not prompts.exists(lang, name):
                missing.setdefault((label, name), []).append(lang)
        for (label, name), langs in missing.items():
            path = (
                ("nodes", node_id)
                if label.startswith("numbers")
                else ("nodes", node_id, *label.split("."))
            )
            problems.append(
                Problem(
                    f"{label}: prompt {name!r} is missing for {', '.join(langs)} "
                    f"(looked in {prompts.root})",
                    node=node_id,
                    line=lines.line_of(path),
                )
            )
    return problems


def _language_problems(
    nodes: dict[str, _Node], languages: tuple[str, ...], lines: _Lines
) -> list[Problem]:
    return [
        Problem(
            f"set: language {node.set!r} is not one of the flow's languages "  # type: ignore[attr-defined]
            f"({', '.join(languages)})",
            node=node_id,
            line=lines.line_of(("nodes", node_id, "set")),
        )
        for node_id, node in nodes.items()
        if node.type == "language" and node.set not in languages  # type: ignore[attr-defined]
    ]


# --- public ----------------------------------------------------------------------


def load_flow(
    source: str | Path, *, prompts: PromptSet = SHIPPED_PROMPTS, name: str | None = None
) -> Flow:
    """A flow from a YAML file (a ``Path``) or YAML text (a ``str``), fully checked.

    Raises ``FlowError`` listing every problem with its node and line.
    """
    if isinstance(source, Path):
        label = name or source.name
        text = source.read_text(encoding="utf-8")
    else:
        label = name or "<flow>"
        text = source
    data, lines = _compose(text, label)
    if not isinstance(data, dict):
        hint = ""
        if isinstance(source, str) and source.strip().endswith((".yaml", ".yml")):
            hint = "; to load a file, pass a pathlib.Path"
        raise FlowError(label, [Problem(f"a flow is a mapping (id, start, language, nodes){hint}")])
    problems = list(lines.problems)
    try:
        doc = _FlowDoc.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, lines, (), None))
        raw_nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
        nodes, node_problems = _check_nodes(raw_nodes, lines)
        raise FlowError(label, problems + node_problems) from None
    languages = tuple(dict.fromkeys([doc.language, *doc.languages]))
    nodes, node_problems = _check_nodes(doc.nodes, lines)
    problems += node_problems
    problems += _graph_problems(doc.start, nodes, doc.nodes, lines)
    problems += _language_problems(nodes, languages, lines)
    problems += _prompt_problems(nodes, languages, prompts, lines)
    if problems:
        problems.sort(key=lambda p: p.line or 0)
        raise FlowError(label, problems)
    return Flow(
        id=doc.id,
        start=doc.start,
        language=doc.language,
        languages=languages,
        nodes=nodes,
        prompts=prompts,
        source=label,
        description=doc.description.strip(),
        lines={n: lines.line_of(("nodes", n)) or 0 for n in nodes},
    )


def shipped_flow_files() -> list[Path]:
    """The YAML files of the flows that ship with the package."""
    folder = resources.files("ivr") / "flows"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_shipped(prompts: PromptSet = SHIPPED_PROMPTS) -> dict[str, Flow]:
    """Every shipped flow by id (``12345-default``, ``12345-after-hours``,
    ``card-service``, ``post-call-survey``), checked against ``prompts``."""
    flows: dict[str, Flow] = {}
    for path in shipped_flow_files():
        flow = load_flow(path, prompts=prompts)
        flows[flow.id] = flow
    return flows
