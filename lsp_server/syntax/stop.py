"""SyntaxStop: stop when the block the cursor is in is complete and the output has left it.

A tree-sitter safety net that works with or without GenGuard and for any model.  After
every completed output line the document (a window of the prefix + the output so far) is
re-parsed; nothing is decided on text that is inside a string, a comment or an open
bracket, because tree-sitter lexes those properly (the plain-text ``DedentStop`` cannot).

- Python (indentation): a line that starts a new statement below the block's indentation
  ends the block, provided the code before it parses without errors (so a completion that
  stopped mid-expression, or inside a multi-line string, is never cut) and an opened block
  got at least one statement.
- Brace languages: counting bracket tokens from the cursor, the line on which the count
  drops below zero closes the cursor's block (``} else {`` closes and reopens: not an
  exit).  That line is kept: it is the block's closing brace, unless the text after the
  cursor already has it.
- Any language: a line that repeats the first non-blank line after the cursor is where the
  model started re-typing the suffix; the output is cut before it.

Brace lines are judged when their newline arrives (the closing line is kept whole); a
Python line is judged as soon as its first non-blank character is there, because that
character already decides a dedent.  Either way the decision depends on the text only,
not on how the decoder split its output into steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tree_sitter import Node, Parser

from ..stop_rule import StopDecision
from .languages import LANGUAGES, parser

_OPEN = frozenset({"{", "(", "[", "${", "#{"})
_CLOSE = frozenset({"}", ")", "]"})
_STRINGISH = ("string", "comment", "char", "heredoc", "template", "raw_string", "interpreted_string")


def _indent(line: str) -> int:
    stripped = line.expandtabs(4)
    return len(stripped) - len(stripped.lstrip(" "))


def _has_error_after(root: Node, byte: int) -> bool:
    """An ERROR or MISSING node that ends after ``byte`` (errors earlier in the file are the user's)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.end_byte <= byte and node is not root:
            continue
        if node.type == "ERROR" or node.is_missing:
            return True
        if node.has_error:
            stack.extend(node.children)
    return False


def _leaves(root: Node, start: int, end: int) -> list[Node]:
    """Leaf tokens in [start, end), strings and comments as single leaves, in order."""
    leaves = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node.end_byte <= start or node.start_byte >= end:
            continue
        if node.child_count == 0 or node.type.startswith(_STRINGISH):
            if node.start_byte >= start:
                leaves.append(node)
            continue
        stack.extend(reversed(node.children))
    return leaves


class SyntaxStop:
    """The tree-sitter stop rule for one language (a ``StopRule``); inert for unknown languages."""

    def __init__(self, language: str | None, trim_suffix_repeat: bool = True) -> None:
        self.language = language if language in LANGUAGES else None
        self.trim_suffix_repeat = trim_suffix_repeat
        self._parser: Parser | None = parser(self.language) if self.language else None

    # -- set-up -----------------------------------------------------------------------

    def begin(self, prefix: str, suffix: str) -> None:
        self._checked_lines = 0
        self._seen_code = False
        self._depth = 0
        self._depth_bytes = 0
        self._suffix_line = next((line.strip() for line in suffix.splitlines() if line.strip()), None)
        if self._parser is None:
            return
        self._window = prefix[self._window_start(prefix) :]
        self._window_bytes = self._window.encode("utf-8")
        self._cursor_line = prefix[prefix.rfind("\n") + 1 :]
        if not LANGUAGES[self.language].braces:
            self._python_reference()

    def _window_start(self, prefix: str) -> int:
        """Start of the top-level construct the cursor is in: enough context to lex and parse it."""
        data = prefix.encode("utf-8")
        tree = self._parser.parse(data)
        start = 0
        for child in tree.root_node.children:
            if child.start_byte < len(data):
                start = child.start_byte
        line_start = data.rfind(b"\n", 0, start) + 1
        return len(data[:line_start].decode("utf-8", errors="ignore"))

    def _python_reference(self) -> None:
        """Indentation the output must stay at or above, and whether the cursor opened a block."""
        lines = self._window.split("\n")
        cursor_col = len(self._cursor_line.expandtabs(4))
        self._judge_first = not self._cursor_line.strip()
        if self._cursor_line.strip():
            self._opener = self._cursor_line.split("#", 1)[0].rstrip().endswith(":")
            self._reference = _indent(self._cursor_line) + (1 if self._opener else 0)
            return
        tree = self._parser.parse(self._window_bytes)
        offsets = []
        offset = 0
        for line in lines:
            offsets.append(offset)
            offset += len(line.encode("utf-8")) + 1
        last_code = None
        statement_indent = None
        for index in range(len(lines) - 2, -1, -1):
            line = lines[index]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if last_code is None:
                last_code = line
            first = offsets[index] + (len(line.encode("utf-8")) - len(line.lstrip().encode("utf-8")))
            if self._starts_statement(tree.root_node, first):
                statement_indent = _indent(line)
                break
        if last_code is None or statement_indent is None:
            self._opener, self._reference = False, cursor_col
            return
        self._opener = last_code.split("#", 1)[0].rstrip().endswith(":")
        if self._opener:
            # Body of the block just opened: leaving it means coming back to the header's indent.
            self._reference = max(cursor_col, statement_indent + 1)
        else:
            self._reference = cursor_col if cursor_col > 0 else statement_indent

    @staticmethod
    def _starts_statement(root: Node, byte: int) -> bool:
        node = root.descendant_for_byte_range(byte, byte)
        while node is not None and node.start_byte == byte:
            if node.parent is not None and node.parent.type in ("block", "module"):
                return True
            node = node.parent
        return False

    # -- per step ---------------------------------------------------------------------

    def step(self, text: str, accepted: Sequence[int], hidden: Any) -> StopDecision | None:
        """Judge every line completed since the last call; the first exit found wins."""
        lines = []
        offset = 0
        while (end := text.find("\n", offset)) != -1:
            lines.append((offset, end))
            offset = end + 1
        decision = None
        for index in range(self._checked_lines, len(lines)):
            start, end = lines[index]
            decision = self._judge(text, index, start, end)
            if decision is not None:
                break
        self._checked_lines = len(lines)
        if decision is None and self._parser is not None and not LANGUAGES[self.language].braces:
            # Python: a new line's first character already says whether it dedents out of the
            # block; deciding there saves generating the rest of an unwanted line.
            if text[offset:].strip():
                decision = self._judge_indent(text, len(lines), offset)
        return decision

    def _judge(self, text: str, index: int, start: int, end: int) -> StopDecision | None:
        line = text[start:end]
        if (self.trim_suffix_repeat and index > 0 and self._suffix_line and line.strip() == self._suffix_line
                and any(ch.isalnum() for ch in line)):
            return StopDecision(start, "syntax-repeats-suffix")
        if self._parser is None:
            return None
        if LANGUAGES[self.language].braces:
            return self._judge_braces(text, start, end)
        return self._judge_indent(text, index, start)

    def _judge_indent(self, text: str, index: int, start: int) -> StopDecision | None:
        line_end = text.find("\n", start)
        line = text[start:] if line_end == -1 else text[start:line_end]
        if not line.strip():
            return None
        if index == 0 and not self._judge_first:
            return None  # continues the cursor line
        indent = _indent(line) if index > 0 else _indent(self._cursor_line + line)
        if indent >= self._reference:
            if not line.lstrip().startswith("#"):
                self._seen_code = True
            return None
        if self._opener and not self._seen_code:
            return None  # an empty block is not complete
        head = (self._window + text[:start]).encode("utf-8")
        tree = self._parser.parse(head)
        if _has_error_after(tree.root_node, len(self._window_bytes) - len(self._cursor_line.encode("utf-8"))):
            return None  # inside a string or bracket, or the code so far does not parse yet
        return StopDecision(start, "syntax-dedent")

    def _judge_braces(self, text: str, start: int, end: int) -> StopDecision | None:
        doc = (self._window + text[:end]).encode("utf-8")
        tree = self._parser.parse(doc)
        line_start = len((self._window + text[:start]).encode("utf-8"))
        begin = max(len(self._window_bytes), self._depth_bytes)
        for leaf in _leaves(tree.root_node, begin, len(doc)):
            if leaf.type in _OPEN:
                self._depth += 1
            elif leaf.type in _CLOSE and not leaf.is_missing:
                self._depth -= 1
        self._depth_bytes = len(doc)
        if self._depth >= 0:
            return None
        line = text[start:end]
        if line_start >= len(self._window_bytes) and self._suffix_line is not None and line.strip() == self._suffix_line:
            return StopDecision(start, "syntax-closed-suffix")  # the file already has this closing line
        return StopDecision(end, "syntax-closed")


_LOCAL_DECLARATIONS = frozenset({
    "lexical_declaration", "variable_declaration",  # JavaScript / TypeScript: const, let, var
    "short_var_declaration", "var_declaration",  # Go
    "let_declaration",  # Rust
    "local_variable_declaration",  # Java
})
_ASSIGNMENTS = frozenset({
    "assignment", "augmented_assignment",  # Python
    "assignment_expression", "augmented_assignment_expression", "compound_assignment_expr",  # C-like, JS, Rust
    "assignment_statement",  # Go
})
_STORES = _LOCAL_DECLARATIONS | _ASSIGNMENTS | {"declaration"}  # C/C++ locals are plain declarations
_NAMES = frozenset({"identifier", "expression_list", "pattern_list", "tuple_pattern"})


def _ends_with_local_assignment(last: Node) -> bool:
    """Whether the statement that ``last`` (the final token) ends gives a local variable a
    value: ``total = 0``, ``let x = f()``, ``n += 1``, ``x := y``, ``int x = 1;``.

    Code that stops there computed a value for code not written yet (Go refuses to compile
    an unused local; linters call it a dead store), so the answer is unfinished.  Stores
    with side effects (``self.x = 1``, ``items[i] = v``, ``obj.field = v``) are not.
    """
    node: Node | None = last
    while node is not None and node.type not in _STORES:
        if node.type == "expression_statement":  # the store is its expression
            node = node.named_children[0] if node.named_children else None
            break
        if node.type.endswith(("statement", "block", "body")):
            return False  # a return, a loop, a block: not a store
        node = node.parent
    return node is not None and _is_local_store(node)


def _is_local_store(node: Node) -> bool:
    if node.type in _LOCAL_DECLARATIONS:
        return True
    if node.type == "declaration":  # C/C++: a local with a value (not a prototype)
        return any(child.type == "init_declarator" for child in node.named_children)
    if node.type not in _ASSIGNMENTS:
        return False
    target = node.child_by_field_name("left")
    if target is None or target.type not in _NAMES:
        return False
    return target.type == "identifier" or all(child.type == "identifier" for child in target.named_children)


def unfinished(text: str, language: str | None) -> bool:
    """Whether ``text`` (a completion, from the cursor on) cannot be the whole answer yet.

    GenGuard's veto, for the learned rule's worst mistakes: a "stop" with no code written
    yet (only blanks or comments), inside ``foo(a,`` or an unterminated string, right
    after a Python block header (``while x:`` with no body), or right after a value was
    given to a local variable (``_ends_with_local_assignment``).  Only the output is
    parsed; brackets the prefix opened (the function's own ``{``) make the count negative,
    never positive.
    """
    if language not in LANGUAGES:
        return False
    data = text.encode("utf-8")
    tree = parser(language).parse(data)
    depth = 0
    last = None
    comment_types = LANGUAGES[language].comment_types
    for leaf in _leaves(tree.root_node, 0, len(data)):
        if leaf.type in comment_types or leaf.start_byte == leaf.end_byte:
            continue  # comments, and empty or MISSING nodes the parser made up
        last = leaf
        if leaf.type in _OPEN:
            depth += 1
        elif leaf.type in _CLOSE and not leaf.is_missing:
            depth -= 1
        elif leaf.type == "string_start" and leaf.parent is not None and leaf.parent.type == "ERROR":
            return True  # an unterminated (multi-line) string
    if last is None:
        return True  # nothing but blanks and comments
    if not LANGUAGES[language].braces and (last.type == ":" or data.rstrip().endswith(b"\\")):
        return True  # a block header without its body, or a continued line
    return depth > 0 or _ends_with_local_assignment(last)
