"""A small writer of text-only PDF files (the printable prescription).

A printable prescription is a page or two of lines of text, so the file is
built here rather than with a layout library: PDF 1.4, A4 pages, the standard
Helvetica fonts (every reader has them, nothing is embedded) in WinAnsi
encoding, one content stream per page, and a cross-reference table with
exact offsets, so strict readers (and our own upload check, which parses it
with pypdf) accept it.

Limits, on purpose: Latin-1/Windows-1252 text only (any other character
prints as "?"), lines are wrapped by an approximate character count, no
images. Text that needs more should move to a layout library.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4 in points
MARGIN = 56
FONTS = {"regular": "Helvetica", "bold": "Helvetica-Bold"}


@dataclass(frozen=True)
class Line:
    """One paragraph of text; ``size`` in points. An empty ``text`` leaves a gap."""

    text: str
    size: float = 10.5
    bold: bool = False
    indent: float = 0

    @property
    def leading(self) -> float:
        return self.size * 1.4

    def wrapped(self) -> list[str]:
        # Helvetica's average glyph is about half an em wide; 0.52 keeps lines inside the margin.
        width = int((PAGE_WIDTH - 2 * MARGIN - self.indent) / (self.size * 0.52))
        return textwrap.wrap(self.text, width=width, break_long_words=True) or [""]


def _pdf_string(text: str) -> bytes:
    """``text`` as a PDF literal string in WinAnsi encoding, escaped."""
    raw = text.encode("cp1252", errors="replace")
    out = bytearray(b"(")
    for byte in raw:
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    out += b")"
    return bytes(out)


def _pages(lines: Iterable[Line]) -> list[bytes]:
    """Content streams, one per page, filling each page from the top."""
    pages: list[bytes] = []
    current: list[bytes] = []
    y: float = PAGE_HEIGHT - MARGIN
    for line in lines:
        for piece in line.wrapped():
            if y - line.leading < MARGIN:
                pages.append(b"\n".join(current))
                current, y = [], PAGE_HEIGHT - MARGIN
            y -= line.leading
            if piece:
                font = b"/F2" if line.bold else b"/F1"
                current.append(
                    b"BT %s %.1f Tf 1 0 0 1 %.1f %.1f Tm %s Tj ET"
                    % (font, line.size, MARGIN + line.indent, y, _pdf_string(piece))
                )
    pages.append(b"\n".join(current))
    return pages


def render(lines: Sequence[Line], *, title: str) -> bytes:
    """A PDF of ``lines``, with ``title`` in its document information."""
    contents = _pages(lines)
    # Objects: 1 catalog, 2 page tree, 3-4 fonts, 5 info, then a page and its content per page.
    first_page = 6
    page_ids = [first_page + 2 * index for index in range(len(contents))]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % pid for pid in page_ids), len(page_ids)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % FONTS["regular"].encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % FONTS["bold"].encode(),
        b"<< /Title %s /Producer (Caretrail) >>" % _pdf_string(title),
    ]
    for page_id, content in zip(page_ids, contents, strict=True):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>"
            % (PAGE_WIDTH, PAGE_HEIGHT, page_id + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)
