from lsp_server.documents import UTF8, UTF16, UTF32, cursor_offset, looks_binary, split_at


def test_offsets_in_each_encoding_around_an_astral_character():
    source = 'x = "😋"\ny'
    # the closing quote: 9 UTF-8 units, 7 UTF-16 units, 6 code points into the line
    assert cursor_offset(source, 0, 9, UTF8) == 6
    assert cursor_offset(source, 0, 7, UTF16) == 6
    assert cursor_offset(source, 0, 6, UTF32) == 6
    assert cursor_offset(source, 1, 1, UTF16) == len(source)


def test_position_inside_a_surrogate_pair_rounds_down():
    source = 'a😋b'
    assert cursor_offset(source, 0, 2, UTF16) == 1


def test_crlf_and_lone_cr_are_line_breaks_but_form_feed_is_not():
    source = "ab\r\ncd\ref\x0cgh\nij"
    assert cursor_offset(source, 1, 1, UTF16) == source.index("d")
    assert cursor_offset(source, 2, 3, UTF16) == source.index("\x0c") + 1
    assert cursor_offset(source, 3, 0, UTF16) == source.index("ij")


def test_character_past_line_end_clamps_and_line_past_end_is_none():
    source = "abc\r\ndef"
    assert cursor_offset(source, 0, 99, UTF16) == 3
    assert cursor_offset(source, 2, 0, UTF16) is None
    assert cursor_offset(source, -1, 0, UTF16) is None
    assert cursor_offset("", 0, 0, UTF16) == 0


def test_split_gives_prefix_suffix_and_word():
    cursor = split_at("def foo_ba(x):\n    return x", 0, 10, UTF16)
    assert cursor.prefix == "def foo_ba"
    assert cursor.suffix == "(x):\n    return x"
    assert cursor.word == "foo_ba"


def test_binary_detection():
    assert looks_binary("abc\x00def")
    assert not looks_binary("plain text")
