"""xsplice-reuse's rule for static inline functions a translation unit never names, on small texts.

The rule (docs/performance.md): a static inline definition whose name appears nowhere else in the
preprocessed text, not even in a string, is dropped before the original's and the patched tree's
texts are compared. A mention is a whole word, as `\\bNAME\\b` finds it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from types import ModuleType

from conftest import REPO


def _helper() -> ModuleType:
    path = REPO / "xsplice_build" / "data" / "xsplice-reuse"
    loader = importlib.machinery.SourceFileLoader("xsplice_reuse", str(path))
    spec = importlib.util.spec_from_loader("xsplice_reuse", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


UNUSED = b"static inline int bucket(int port)\n{\n return port * 5;\n}\n"


def test_an_inline_never_named_is_dropped_and_a_named_one_kept() -> None:
    dropped = _helper().unused_inlines_dropped
    assert b"bucket" not in dropped(UNUSED + b"int f(void) { return 1; }\n")
    for mention in (b"int f(void) { return bucket(1); }\n", b"const char *s = \"bucket\";\n",
                    b"int bucket(int);\n", b"int f(void) { return (int)(long)&bucket; }\n"):
        assert dropped(UNUSED + mention) == UNUSED + mention, mention


def test_a_mention_is_a_whole_word_as_the_regular_expression_finds_it() -> None:
    dropped = _helper().unused_inlines_dropped
    for text in (b"int x = 0x1bucket;\n", b"int bucket_count;\n", b"int my_bucket;\n", b"int y = 9bucket;\n"):
        whole_words = len(re.findall(rb"\bbucket\b", UNUSED + text)) - 1  # minus the definition's own name
        assert (b"bucket(" in dropped(UNUSED + text)) == (whole_words > 0), text
