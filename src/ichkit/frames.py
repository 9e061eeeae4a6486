"""Is an encapsulated DICOM frame one whole codestream? Checked before decoding, because the JPEG-LS and
JPEG lossless decoders return an image of the right shape (with garbage rows) from a truncated frame,
and every decoder ignores bytes after the end of its codestream.

`frame_problem(frame, transfer_syntax)` walks the markers (it does not decode):
- JPEG (lossless, baseline, extended) and JPEG-LS: marker segments by their lengths, then the entropy-coded
  data up to EOI (FFD9); only zero padding may follow EOI (DICOM pads fragments to an even length);
- JPEG 2000 (J2K codestream or a JP2 box file around one): main header, then each tile-part by its Psot
  length, up to EOC (FFD9);
- RLE: the 64-byte header's segment count and offsets lie inside the frame, and no segment is longer
  than PackBits can be for Rows x Columns bytes (2 bytes per byte: catches a second image appended to a
  frame that is not tiny).
Returns None for a complete frame, else one sentence saying what is wrong.
"""

from __future__ import annotations

import struct

JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
}
JPEG2000_FAMILY = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                   "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
RLE = "1.2.840.10008.1.2.5"
_STANDALONE = {0x01, 0xD8, 0xD9, *range(0xD0, 0xD8)}  # TEM, SOI, EOI, RST0-7: markers without a length


def frame_problem(frame: bytes, transfer_syntax: str, segments_expected: int | None = None,
                  pixels: int | None = None) -> str | None:
    """None if `frame` is one complete codestream of its syntax, else what is wrong with it.

    For RLE, `segments_expected` (BitsAllocated / 8 x SamplesPerPixel) and `pixels` (Rows x Columns, the
    bytes each segment decodes to) bound the header and each segment's length."""
    ts = str(transfer_syntax)
    if ts in JPEG_FAMILY:
        return _jpeg_problem(frame, jpeg_ls=ts in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"))
    if ts in JPEG2000_FAMILY:
        return _j2k_problem(frame)
    if ts == RLE:
        return _rle_problem(frame, segments_expected, pixels)
    return None


def _tail_after(frame: bytes, end: int) -> str | None:
    rest = frame[end:]
    if rest.strip(b"\x00"):
        return f"{len(rest)} bytes after the end of the codestream (a second image or garbage)"
    return None


def _jpeg_problem(frame: bytes, jpeg_ls: bool) -> str | None:
    n = len(frame)
    if n < 4 or frame[:2] != b"\xff\xd8":
        return "frame does not start with a JPEG SOI marker"
    i = 2
    while True:
        if i + 2 > n:
            return "frame ends inside the JPEG header (truncated)"
        if frame[i] != 0xFF:
            return f"no JPEG marker at byte {i}"
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return _tail_after(frame, i + 2)
        if marker in _STANDALONE:
            i += 2
            continue
        if i + 4 > n:
            return "frame ends inside a JPEG marker segment (truncated)"
        length = struct.unpack(">H", frame[i + 2 : i + 4])[0]
        if length < 2 or i + 2 + length > n:
            return f"JPEG marker segment FF{marker:02X} runs past the end of the frame (truncated)"
        i += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            i = _scan_end(frame, i, jpeg_ls)
            if i < 0:
                return "frame ends inside the entropy-coded data, without an EOI marker (truncated)"


def _scan_end(frame: bytes, i: int, jpeg_ls: bool) -> int:
    """Index of the marker that ends the scan starting at `i`, or -1 if the frame ends first."""
    n = len(frame)
    while True:
        j = frame.find(b"\xff", i)
        if j < 0 or j + 1 >= n:
            return -1
        nxt = frame[j + 1]
        # JPEG stuffs FF 00 and keeps RSTn inside the scan; JPEG-LS stuffs a 0 bit (next byte < 0x80)
        in_scan = nxt < 0x80 if jpeg_ls else (nxt == 0x00 or 0xD0 <= nxt <= 0xD7)
        if not in_scan:
            return j
        i = j + 2 if not jpeg_ls else j + 1


def _j2k_problem(frame: bytes) -> str | None:
    n = len(frame)
    start = 0
    if frame[4:8] == b"jP  ":  # a JP2 file: find the contiguous codestream box
        pos = 0
        while pos + 8 <= n:
            size, kind = struct.unpack(">I4s", frame[pos : pos + 8])
            header = 8
            if size == 1 and pos + 16 <= n:
                size, header = struct.unpack(">Q", frame[pos + 8 : pos + 16])[0], 16
            if kind == b"jp2c":
                start = pos + header
                break
            if size < header:
                return "malformed JP2 box"
            pos += size
        else:
            return "JP2 file without a codestream box (truncated)"
    if frame[start : start + 2] != b"\xff\x4f":
        return "frame does not start with a JPEG 2000 SOC marker"
    i = start + 2
    while True:  # main header segments up to the first SOT
        if i + 4 > n:
            return "frame ends inside the JPEG 2000 main header (truncated)"
        if frame[i] != 0xFF:
            return f"no JPEG 2000 marker at byte {i}"
        marker = frame[i + 1]
        if marker == 0x90:
            break
        i += 2 + struct.unpack(">H", frame[i + 2 : i + 4])[0]
    while True:  # tile-parts, each SOT giving its own length
        if i + 2 > n:
            return "frame ends without a JPEG 2000 EOC marker (truncated)"
        marker = frame[i : i + 2]
        if marker == b"\xff\xd9":
            return _tail_after(frame, i + 2)
        if marker != b"\xff\x90" or i + 12 > n:
            return f"expected a tile-part (SOT) or EOC at byte {i}"
        psot = struct.unpack(">I", frame[i + 6 : i + 10])[0]
        if psot == 0:  # the last tile-part runs to EOC at the end
            return None if frame.rstrip(b"\x00").endswith(b"\xff\xd9") else "last tile-part without EOC (truncated)"
        if i + psot > n:
            return "a JPEG 2000 tile-part runs past the end of the frame (truncated)"
        i += psot


def _rle_problem(frame: bytes, segments_expected: int | None, pixels: int | None = None) -> str | None:
    if len(frame) < 64:
        return "RLE frame shorter than its 64-byte header"
    header = struct.unpack("<16I", frame[:64])
    count, offsets = header[0], list(header[1 : 1 + min(header[0], 15)])
    if not 1 <= count <= 15:
        return f"RLE header gives {count} segments"
    if segments_expected is not None and count != segments_expected:
        return f"RLE header gives {count} segments, BitsAllocated x SamplesPerPixel needs {segments_expected}"
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(frame):
        return f"RLE segment offsets {offsets} do not fit a {len(frame)}-byte frame"
    if pixels:
        # PackBits needs at most 2 bytes per pixel byte (every byte a literal run of one), +1 pad: a longer
        # segment carries data after the image (a second frame, garbage), which the compiled decoder silently
        # ignores. Best effort: extra data that fits under this bound is not seen (the image decodes intact).
        limit = 2 * pixels + 2
        lengths = [b - a for a, b in zip(offsets, offsets[1:] + [len(frame.rstrip(b"\x00")) + 1])]
        longest = max(lengths)
        if longest > limit:
            return f"an RLE segment of {longest} bytes, more than {limit} can encode {pixels} pixels: data after the image"
    return None
