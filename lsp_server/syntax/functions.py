"""Functions in real code and the logical end of a generated function.

Both the GenGuard training data and its evaluation need to know where "the requested
code" ends: for a function cut out of a real file, and for a model's continuation of a
function whose signature (and docstring) was the prompt.  Offsets are character offsets
into ``str`` text; tree-sitter works in UTF-8 bytes, converted here at the edges.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tree_sitter import Node

from .languages import LANGUAGES, parser


@dataclass(frozen=True)
class FunctionSite:
    """A function of a file, seen as a completion task: the cursor is at its body's start."""

    name: str
    start: int
    """Where the definition starts (decorators included)."""
    cursor: int
    """After the signature and docstring / leading comments: what a prompt would end with."""
    end: int
    """The logical end: just after the last character of the definition."""
    cut: int
    """The end of the line the definition ends on, past its newline: text before it is requested code."""


def body_end(text: str, site: FunctionSite, braces: bool) -> int:
    """Where a function's body ends as a completion would write it: before the newline of the
    closing ``}`` line, or at the end of the last statement (Python); the text after it is
    what an editor shows as the suffix when the body is missing."""
    return text.rfind("\n", site.cursor, site.end - 1) if braces else site.end


class ByteMap:
    """Converts between byte offsets of the UTF-8 encoding and character offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = text.encode("utf-8")
        self._ascii = len(self.data) == len(text)

    def to_char(self, byte: int) -> int:
        return byte if self._ascii else len(self.data[:byte].decode("utf-8", errors="ignore"))

    def to_byte(self, char: int) -> int:
        return char if self._ascii else len(self.text[:char].encode("utf-8"))


def line_cut(text: str, end: int) -> int:
    """The offset after the newline that ends the line containing ``end`` (or len(text))."""
    newline = text.find("\n", end)
    return len(text) if newline == -1 else newline + 1


def walk(node: Node) -> Iterator[Node]:
    """Every node under ``node``, preorder (iterative: generated code can nest deep)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def _name(node: Node) -> str:
    for field in ("name", "declarator"):
        child = node.child_by_field_name(field)
        while child is not None and child.type not in ("identifier", "field_identifier", "property_identifier",
                                                        "qualified_identifier", "destructor_name", "operator_name"):
            child = child.child_by_field_name("declarator") or child.child_by_field_name("name")
        if child is not None and child.text is not None:
            return child.text.decode("utf-8", errors="replace")
    return "<anonymous>"


def _python_cursor(node: Node, data: bytes) -> int | None:
    """Byte offset after the header and the docstring, at the start of the next line."""
    body = node.child_by_field_name("body")
    if body is None or not body.named_children:
        return None
    first = body.named_children[0]
    header_end = data.rfind(b"\n", 0, first.start_byte)
    if header_end < node.start_byte:
        return None  # one-line function: no body line to complete
    statements = [child for child in body.named_children if child.type != "comment"]
    if statements and statements[0].type == "expression_statement" and statements[0].named_children \
            and statements[0].named_children[0].type == "string":
        if len(statements) < 2:
            return None  # only a docstring: nothing to complete
        newline = data.find(b"\n", statements[0].end_byte)
        return None if newline == -1 else newline + 1
    return header_end + 1


def _brace_cursor(node: Node, data: bytes, comment_types: frozenset[str]) -> int | None:
    """Byte offset of the line after the body's ``{`` (and after its leading comments)."""
    body = node.child_by_field_name("body")
    if body is None or not body.children or body.children[0].type != "{":
        return None
    after = body.children[0].end_byte
    newline = data.find(b"\n", after)
    if newline == -1 or data[after:newline].strip() or newline >= body.end_byte:
        return None
    cursor = newline + 1
    for child in body.named_children:
        if child.type not in comment_types:
            break
        line_end = data.find(b"\n", child.end_byte)
        cursor = line_end + 1 if line_end != -1 else cursor
    closing = data.rfind(b"\n", 0, body.end_byte - 1)
    return cursor if cursor <= closing else None  # something to write before the closing line


def _header_end(node: Node, braces: bool) -> int | None:
    """Where the body may begin: after ``{`` (brace languages) or the header's ``:`` (Python)."""
    body = node.child_by_field_name("body")
    if body is None:
        return None
    if braces:
        return body.start_byte + 1 if body.children and body.children[0].type == "{" else None
    colons = [child for child in node.children if child.type == ":"]
    return colons[-1].end_byte if colons else None


def nested_in_function(node: Node, function_types: frozenset[str]) -> bool:
    """Whether a function-like node sits inside another one (a local helper, a callback)."""
    parent = node.parent
    while parent is not None:
        if parent.type in function_types:
            return True
        parent = parent.parent
    return False


def _definition_start(node: Node) -> int:
    parent = node.parent
    if parent is not None and parent.type == "decorated_definition":
        return parent.start_byte
    return node.start_byte


def iter_functions(text: str, language: str, top_level_only: bool = False) -> list[FunctionSite]:
    """Multi-line functions of ``text`` that have a body to complete, in source order.

    ``top_level_only`` leaves out functions nested in other functions: after a local
    helper, the enclosing body goes on, so "what comes after" is not excess there.
    """
    spec = LANGUAGES[language]
    bytemap = ByteMap(text)
    tree = parser(language).parse(bytemap.data)
    sites = []
    for node in walk(tree.root_node):
        if node.type not in spec.function_types or node.has_error:
            continue
        if top_level_only and nested_in_function(node, spec.function_types):
            continue
        if spec.braces:
            cursor = _brace_cursor(node, bytemap.data, spec.comment_types)
        else:
            cursor = _python_cursor(node, bytemap.data)
        if cursor is None:
            continue
        end = bytemap.to_char(node.end_byte)
        sites.append(FunctionSite(_name(node), bytemap.to_char(_definition_start(node)), bytemap.to_char(cursor),
                                  end, line_cut(text, end)))
    return sites


def function_end(text: str, cursor: int, language: str) -> int | None:
    """The logical end of the function whose body holds ``cursor`` in ``text`` (prompt + output).

    The innermost function-like node whose body contains the cursor is the requested
    function.  None when there is none or it has syntax errors (an unfinished function, a
    completion that stops mid-expression): its end is then not known.
    """
    spec = LANGUAGES[language]
    bytemap = ByteMap(text)
    # Trailing blanks of the prompt (the cursor line's indentation) belong to no node.
    cursor_byte = len(bytemap.data[: bytemap.to_byte(cursor)].rstrip())
    tree = parser(language).parse(bytemap.data)
    best: Node | None = None
    for node in walk(tree.root_node):
        if node.type not in spec.function_types:
            continue
        header_end = _header_end(node, spec.braces)
        if header_end is None or not header_end <= cursor_byte <= node.end_byte:
            continue
        if best is None or node.start_byte >= best.start_byte:
            best = node
    if best is None or best.has_error:
        return None
    if spec.braces:
        body = best.child_by_field_name("body")
        if body is None or not body.children or body.children[-1].type != "}" or body.children[-1].is_missing:
            return None
    return bytemap.to_char(best.end_byte)
