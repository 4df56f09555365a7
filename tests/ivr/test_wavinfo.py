"""The WAV header reader times prompts in every telephony encoding a prompt set may use
(Python's ``wave`` reads 16-bit PCM only)."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest

from ivr.wavinfo import ALAW, GSM610, MULAW, PCM, WavError, read_wav_info, wav_seconds


def chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt(tag: int, rate: int, align: int, bits: int, extra: bytes | None = None) -> bytes:
    body = struct.pack("<HHIIHH", tag, 1, rate, rate * align, align, bits)
    if extra is not None:
        body += struct.pack("<H", len(extra)) + extra
    return chunk(b"fmt ", body)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "p.wav"
    path.write_bytes(data)
    return path


def test_pcm_written_by_the_wave_module(tmp_path: Path) -> None:
    path = tmp_path / "pcm.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\1\0" * 12_000)
    info = read_wav_info(path)
    assert (info.format_tag, info.encoding, info.sample_rate, info.channels) == (
        PCM,
        "pcm",
        8000,
        1,
    )
    assert info.frames == 12_000
    assert wav_seconds(path) == 1.5


@pytest.mark.parametrize("tag", [ALAW, MULAW])
def test_g711_is_one_byte_a_sample(tmp_path: Path, tag: int) -> None:
    path = write(tmp_path, riff(fmt(tag, 8000, 1, 8, b""), chunk(b"data", b"\x55" * 4000)))
    info = read_wav_info(path)
    assert (info.format_tag, info.frames, info.seconds) == (tag, 4000, 0.5)


def test_gsm_uses_the_fact_count_when_there_is_one(tmp_path: Path) -> None:
    extra = struct.pack("<H", 320)
    path = write(
        tmp_path,
        riff(
            fmt(GSM610, 8000, 65, 0, extra),
            chunk(b"fact", struct.pack("<I", 6000)),
            chunk(b"data", b"\0" * 65 * 19),
        ),
    )
    info = read_wav_info(path)
    assert (info.encoding, info.samples_per_block, info.frames) == ("gsm610", 320, 6000)
    assert info.seconds == 0.75


def test_gsm_without_fact_counts_whole_65_byte_blocks_of_320_samples(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        riff(fmt(GSM610, 8000, 65, 0, struct.pack("<H", 320)), chunk(b"data", b"\0" * 65 * 25)),
    )
    assert read_wav_info(path).frames == 25 * 320
    assert wav_seconds(path) == 1.0


def test_odd_sized_chunks_before_fmt_are_skipped_with_their_pad_byte(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        riff(chunk(b"LIST", b"INFOabc"), fmt(ALAW, 8000, 1, 8), chunk(b"data", b"\0" * 800)),
    )
    assert read_wav_info(path).frames == 800


def test_extensible_format_is_read_through_its_subformat(tmp_path: Path) -> None:
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    extra = struct.pack("<HI", 16, 0x4) + struct.pack("<H", PCM) + guid_tail
    path = write(tmp_path, riff(fmt(0xFFFE, 8000, 2, 16, extra), chunk(b"data", b"\0" * 16_000)))
    info = read_wav_info(path)
    assert (info.format_tag, info.frames) == (PCM, 8000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"ID3\x04" + b"\0" * 40, "not a RIFF/WAVE"),
        (riff(chunk(b"data", b"\0" * 10)), "no fmt"),
        (riff(fmt(PCM, 8000, 2, 16)), "no data"),
        (riff(fmt(0x0002, 8000, 256, 4), chunk(b"data", b"\0" * 256)), "0x0002"),
        (riff(fmt(PCM, 0, 2, 16), chunk(b"data", b"\0" * 4)), "zero"),
    ],
    ids=["mp3", "no-fmt", "no-data", "ms-adpcm", "zero-rate"],
)
def test_what_it_cannot_time_is_an_error_not_a_guess(
    tmp_path: Path, data: bytes, message: str
) -> None:
    with pytest.raises(WavError, match=message):
        read_wav_info(write(tmp_path, data))
