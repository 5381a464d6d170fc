from execbox_server.output import HeadTail, strip_ansi


def test_head_tail_keeps_everything_under_the_limit() -> None:
    buf = HeadTail(100)
    assert buf.add("hello ") == "hello "
    buf.add("world")
    assert buf.text() == "hello world" and buf.dropped == 0


def test_head_tail_keeps_head_and_tail_and_counts_the_middle_exactly() -> None:
    buf = HeadTail(10)
    for i in range(100):
        buf.add(str(i % 10))
    assert buf.dropped == 90
    assert buf.text() == "01234\n[... 90 bytes truncated ...]\n56789"


def test_head_tail_memory_stays_bounded_under_a_flood() -> None:
    buf = HeadTail(1000)
    for _ in range(10_000):
        buf.add("x" * 1000)
    assert len(buf._tail) <= 2 * 500 + 1000
    assert buf.total == 10_000_000


def test_head_tail_counts_utf8_bytes_and_never_splits_into_garbage() -> None:
    buf = HeadTail(8)
    buf.add("é" * 10)  # 20 bytes
    assert buf.dropped == 12
    assert "\ufffd" not in buf.text().replace("\n", "")


def test_strip_ansi_removes_colour_codes() -> None:
    assert strip_ansi("\x1b[0;31mValueError\x1b[0m: bad") == "ValueError: bad"
