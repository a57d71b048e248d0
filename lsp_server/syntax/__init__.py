"""Tree-sitter syntax for stop rules and GenGuard's labels (no torch here).

- ``languages``: grammar per document (languageId or extension), cached grammars;
- ``functions``: functions of a file as completion sites, the logical end of a generated function;
- ``stop``: ``SyntaxStop``, the syntactic stop rule.
"""

from __future__ import annotations

from .functions import FunctionSite, body_end, function_end, iter_functions
from .languages import LANGUAGES, detect_language
from .stop import StopDecision, SyntaxStop

__all__ = ["LANGUAGES", "FunctionSite", "StopDecision", "SyntaxStop", "body_end", "detect_language", "function_end",
           "iter_functions"]
