"""xsplice-reuse's rule for static inline functions a translation unit never names, on small texts.

The rule (docs/performance.md): a static inline definition whose name appears nowhere else in the
preprocessed text, not even in a string, is dropped before the original's and the patched tree's
texts are compared. A mention is a whole word, as `\\bNAME\\b` finds it.
"""

from __future__ import annotations

import random
import re

from xsplice_build.stages.sandboxed_reuse import reuse_helper_module

UNUSED = b"static inline int bucket(int port)\n{\n return port * 5;\n}\n"


def test_an_inline_never_named_is_dropped_and_a_named_one_kept() -> None:
    dropped = reuse_helper_module().unused_inlines_dropped
    assert b"bucket" not in dropped(UNUSED + b"int f(void) { return 1; }\n")
    for mention in (b"int f(void) { return bucket(1); }\n", b"const char *s = \"bucket\";\n",
                    b"int bucket(int);\n", b"int f(void) { return (int)(long)&bucket; }\n"):
        assert dropped(UNUSED + mention) == UNUSED + mention, mention


def test_a_mention_is_a_whole_word_as_the_regular_expression_finds_it() -> None:
    dropped = reuse_helper_module().unused_inlines_dropped
    for text in (b"int x = 0x1bucket;\n", b"int bucket_count;\n", b"int my_bucket;\n", b"int y = 9bucket;\n"):
        whole_words = len(re.findall(rb"\bbucket\b", UNUSED + text)) - 1  # minus the definition's own name
        assert (b"bucket(" in dropped(UNUSED + text)) == (whole_words > 0), text


# The rule for a raw string literal's start, as a regular expression: R" after an optional prefix, not ending an
# identifier. The helper looks for it where R" is (faster on a 1 MB text), and must find the same.
RAW_STRING = re.compile(rb'(^|[^A-Za-z0-9_])(u8|u|U|L)?R"', re.MULTILINE)


def test_a_raw_string_is_found_where_the_regular_expression_finds_one() -> None:
    has_raw_string = reuse_helper_module()._has_raw_string
    pieces = [b"R", b'"', b"u", b"8", b"U", b"L", b" ", b"\n", b"x", b"_", b"1"]
    generator = random.Random(17)
    for _ in range(50_000):
        text = b"".join(generator.choice(pieces) for _ in range(generator.randint(0, 8)))
        assert has_raw_string(text) == bool(RAW_STRING.search(text)), text
    assert has_raw_string(b'const char *s = u8R"(x)";') and not has_raw_string(b'const char *s = FOOR"x";')
