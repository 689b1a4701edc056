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


# The shortcut (differs_in_one_unused_inline) reads only where two texts differ; whenever it answers, the whole
# rule must give the same answer. Texts made of the pieces a preprocessed unit has, then edited at random.
NAMES = [b"f0", b"f1", b"f2", b"g", b"x", b"ret"]


def _unit(generator: random.Random) -> bytes:
    items = []
    for _ in range(generator.randint(2, 7)):
        name, other = generator.choice(NAMES), generator.choice(NAMES)
        items.append(generator.choice([
            b"static inline int %s(int a)\n{\n int ret = a;\n return ret + %s(1);\n}\n" % (name, other),
            b"static inline __attribute__((always_inline)) int %s(void) { return 2; }\n" % name,
            b"static inline int %s(int a) { if ( a ) { return 1; } return 0; }\n" % name,
            b"int %s(int);\n" % name,
            b"int caller_%s(void) { return %s(3); }\n" % (name, name),
            b"const char *s_%s = \"%s }\";\n" % (name, other),
            b"#pragma GCC visibility push(default)\n",
            b"struct s_%s { int %s; };\n" % (name, other),
        ]))
    return b"".join(items)


def _edited(text: bytes, generator: random.Random) -> bytes:
    pieces = [b"{", b"}", b";", b'"', b"'", b"\n#x\n", b" ", b"\n", b"(", b")", b"static ", b"inline ",
              b"if ( a ) ", b"return 7;", *NAMES, *(name + b"(1)" for name in NAMES)]
    at = generator.randrange(len(text) + 1)
    end = min(len(text), at + generator.choice([0, 0, 1, 2, 5]))
    return text[:at] + b"".join(generator.choice(pieces) for _ in range(generator.randint(0, 3))) + text[end:]


def test_the_shortcut_answers_only_as_the_whole_rule_does() -> None:
    helper = reuse_helper_module()
    generator = random.Random(29)
    shown = 0
    for _ in range(20_000):
        original = _unit(generator)
        structure = helper.inline_structure(original)
        if structure is None:
            continue
        edited = _edited(original, generator)
        if helper.differs_in_one_unused_inline(original, edited, structure):
            assert helper.unused_inlines_dropped(original) == helper.unused_inlines_dropped(edited), \
                (original, edited)
            shown += 1
    assert shown > 1_000  # the shortcut does answer (here for about a sixth of the edits)


def test_the_shortcut_shows_an_edit_inside_an_unused_inline_and_leaves_the_rest_to_the_rule() -> None:
    helper = reuse_helper_module()
    original = UNUSED + b"static inline int other(int a) { return a; }\nint f(void) { return 1; }\n"
    structure = helper.inline_structure(original)
    assert structure["inline_names"] == ["bucket", "other"]
    fixed = original.replace(b" return port * 5;", b" if ( port < 0 )\n  return -22;\n return port * 5;")
    assert helper.differs_in_one_unused_inline(original, fixed, structure) is True
    # Calling another inline changes whether that one is named: the whole rule decides (and keeps it).
    calls_other = original.replace(b"return port * 5;", b"return other(port);")
    assert helper.differs_in_one_unused_inline(original, calls_other, structure) is None
    assert helper.unused_inlines_dropped(original) != helper.unused_inlines_dropped(calls_other)
    # An edit outside any inline, or in a named one: not shown this way.
    assert helper.differs_in_one_unused_inline(original, original.replace(b"return 1;", b"return 2;"),
                                               structure) is None
    named = original + b"int g(void) { return bucket(2); }\n"
    assert helper.differs_in_one_unused_inline(named, named.replace(b"port * 5", b"port * 6"),
                                               helper.inline_structure(named)) is None
