"""engine/log.py text lines stay one line whatever a field holds (an exception's message,
a client-chosen string): a newline would split the line, or forge a second event."""
import io

from engine.log import Logger


def test_a_newline_in_a_field_does_not_split_the_text_line():
    out = io.StringIO()
    log = Logger("publisher", "shard0", stream=out, fmt="text")
    log.event("refused", reason="bad\nts=x proc=matcher event=ready", other="a\tb\x1b[2J")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert 'reason="bad\\nts=x proc=matcher event=ready"' in text
    assert "other=a\\tb\\x1b[2J" in text and "\x1b" not in text
