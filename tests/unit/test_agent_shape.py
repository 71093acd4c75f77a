"""The agent's shape (issue 8): one packet module, one packet path.

Read as text: the header layout, the TCP option walker and the incremental checksum live in
``agent/packet.py`` only, and only the I/O shell (``agent/nfq.py``) gives verdicts."""

import pathlib
import re

import pytest

AGENT = pathlib.Path(__file__).resolve().parents[2] / "sbft_ryu" / "agent"
SOURCES = {path.name: path.read_text(encoding="utf-8") for path in AGENT.glob("*.py")}

HEADER_OFFSETS = [  # raw header arithmetic: what packet.py's names and accessors are for
    r"&\s*0x0F\)\s*\*\s*4",  # the IP header length
    r">>\s*4\)\s*\*\s*4",  # the TCP header length
    r"\[\s*12\s*:\s*16\s*\]", r"\[\s*16\s*:\s*20\s*\]",  # addresses
    r"\bihl\s*\+\s*\d",  # a TCP field by its number
    r"payload\[\s*\d+\s*\]", r"packet\[\s*\d+\s*\]",  # an IP field by its number
]
OPTION_WALKER = r"==\s*1\s*:\s*\n\s*i\s*\+=\s*1"  # skipping a NOP: the walker's mark
CHECKSUM_FOLD = r"%\s*0xFFFF\b"  # the one's-complement fold of an incremental checksum
VERDICTS = r"\.(accept|drop|repeat|set_payload|set_mark)\("


def places(pattern, skip=()):
    return sorted((name, text[:match.start()].count("\n") + 1)
                  for name, text in SOURCES.items() if name not in skip
                  for match in re.finditer(pattern, text))


def test_the_packet_module_is_there():
    assert "packet.py" in SOURCES


@pytest.mark.parametrize("pattern", HEADER_OFFSETS)
def test_no_header_offset_arithmetic_outside_the_packet_module(pattern):
    assert places(pattern, skip={"packet.py"}) == []


def test_one_option_walker():
    assert [name for name, _ in places(OPTION_WALKER)] == ["packet.py"]


def test_one_checksum_helper():
    assert [name for name, _ in places(CHECKSUM_FOLD)] == ["packet.py"]
    assert [name for name, _ in places(r"def checksum_after\(")] == ["packet.py"]
    assert places(r"def \w*checksum\w*\(", skip={"packet.py"}) == []


def test_one_packet_builder():
    assert places(r"struct\.pack\(\s*\"!BBHHHBBH", skip={"packet.py"}) == []
    assert places(r"_IP_HEAD\.pack\(") == [("packet.py", places(r"_IP_HEAD\.pack\(")[0][1])]


def test_only_the_io_shell_gives_verdicts():
    assert {name for name, _ in places(VERDICTS)} == {"nfq.py"}
