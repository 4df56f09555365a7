"""What a WAV prompt is, read from its header: encoding, rate, channels and duration.

Python's ``wave`` module reads 16-bit PCM only, while the shipped prompts are GSM 06.10
(and a city may supply A-law or µ-law recordings), so checking a prompt set or timing a
flow needs a reader that understands the telephony encodings. Only the header is read;
nothing is decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

PCM = 0x0001
ALAW = 0x0006
MULAW = 0x0007
GSM610 = 0x0031
_EXTENSIBLE = 0xFFFE

ENCODINGS = {PCM: "pcm", ALAW: "alaw", MULAW: "mulaw", GSM610: "gsm610"}

GSM610_BLOCK_BYTES = 65  # two 33-byte GSM frames packed into 65 bytes (the "WAV49" layout)
GSM610_BLOCK_SAMPLES = 320


class WavError(ValueError):
    """Not a RIFF/WAVE file this reader can time (wrong magic, no fmt or data chunk,
    an encoding other than PCM, A-law, µ-law or GSM 06.10)."""


@dataclass(frozen=True)
class WavInfo:
    format_tag: int
    channels: int
    sample_rate: int
    block_align: int
    bits_per_sample: int
    frames: int  # samples per channel
    data_bytes: int
    samples_per_block: int = 1  # GSM 06.10: 320 samples in each 65-byte block

    @property
    def encoding(self) -> str:
        return ENCODINGS.get(self.format_tag, f"0x{self.format_tag:04x}")

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def read_wav_info(path: str | Path) -> WavInfo:
    """The header of ``path``. The frame count comes from the fact chunk when there is
    one (it holds the exact sample count for compressed data), else from the data size:
    bytes / block_align for PCM, A-law and µ-law, whole 65-byte blocks x 320 for GSM."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise WavError(f"{path}: not a RIFF/WAVE file")
        fmt: bytes | None = None
        fact: int | None = None
        data_bytes: int | None = None
        while data_bytes is None:
            chunk = f.read(8)
            if len(chunk) < 8:
                break
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = f.read(size)
            elif cid == b"fact" and size >= 4:
                fact = struct.unpack("<I", f.read(4))[0]
                f.seek(size - 4, 1)
            elif cid == b"data":
                data_bytes = size
                break
            else:
                f.seek(size, 1)
            if size % 2:
                f.seek(1, 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise WavError(f"{path}: no fmt chunk")
    if data_bytes is None:
        raise WavError(f"{path}: no data chunk")
    tag, channels, rate, _byte_rate, align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the SubFormat GUID starts with the tag
    if tag not in ENCODINGS:
        raise WavError(f"{path}: encoding 0x{tag:04x} is not PCM, A-law, µ-law or GSM 06.10")
    if not channels or not rate or not align:
        raise WavError(f"{path}: fmt chunk has a zero channel count, rate or block size")
    per_block = 1
    if tag == GSM610:
        per_block = GSM610_BLOCK_SAMPLES
        if len(fmt) >= 20 and struct.unpack("<H", fmt[16:18])[0] >= 2:
            per_block = struct.unpack("<H", fmt[18:20])[0]
        frames = fact if fact is not None else data_bytes // align * per_block
    else:
        frames = fact if fact is not None and tag != PCM else data_bytes // align
    return WavInfo(tag, channels, rate, align, bits, frames, data_bytes, per_block)


def wav_seconds(path: str | Path) -> float:
    """How long ``path`` plays, from its header."""
    return read_wav_info(path).seconds
