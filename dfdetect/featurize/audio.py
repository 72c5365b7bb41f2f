"""Decode audio from any common container into float32 samples, without trusting the extension.

The container is sniffed from the first bytes (Deepfake-Eval-2024 ships MP4/M4A files named `.dat`,
and scraped archives mislabel files all the time). WAV, FLAC, OGG (Vorbis, Opus), MP3 and AIFF go
through libsndfile (soundfile), which is fast and exact; MP4/M4A/AAC, WebM/Matroska and anything
libsndfile refuses go through FFmpeg (PyAV).

Every failure raises `AudioError` naming the file and the reason, so a batch can record it and
move on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from dfdetect.datasets import refs
from dfdetect.errors import ConfigError, DfdetectError

Source = str | os.PathLike | bytes | BinaryIO

# Magic bytes -> container name. Order matters only for overlapping prefixes.
_SIGNATURES: list[tuple[int, bytes, str]] = [
    (0, b"fLaC", "flac"),
    (0, b"OggS", "ogg"),
    (0, b"ID3", "mp3"),
    (0, b"FORM", "aiff"),
    (0, b"\x1a\x45\xdf\xa3", "matroska"),
    (0, b"ADIF", "aac"),
    (0, b"caff", "caf"),
    (4, b"ftyp", "mp4"),
]
SOUNDFILE_CONTAINERS = {"wav", "flac", "ogg", "mp3", "aiff", "caf"}  # read by libsndfile first
SEEKABLE_CONTAINERS = {"wav", "flac", "aiff", "caf"}   # libsndfile seeks these to the exact frame
# Sample rates real recordings have: telephony starts at 8 kHz, studio gear stops at 768 kHz. A
# header outside them is forged or corrupt, and resampling 1 Hz to 16 kHz makes 16,000 samples of
# every one (a 6 KB file would be 50 minutes, gigabytes).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000
TRUNCATED_FRACTION = 0.99  # decoded below this share of the length the header declares: truncated
HEADER_BYTES = 1 << 16     # how much of a file header_frames reads (chunks before the audio included)


class AudioError(DfdetectError):
    """A clip that cannot be used: the message names the file and why. `kind` is a short stable
    tag (e.g. "empty", "decode_failed", "silent") so batches can tabulate errors by kind."""

    def __init__(self, where: str, kind: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, shape [channels, frames], nominally in [-1, 1]
    sample_rate: int
    container: str       # what the bytes are, whatever the file name says
    warnings: tuple[str, ...] = ()   # what the decoder library said about damage it decoded past

    @property
    def channels(self) -> int:
        return self.samples.shape[0]

    @property
    def frames(self) -> int:
        return self.samples.shape[1]

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def check_sample_rate(rate: int, where: str) -> None:
    """AudioError "bad_sample_rate" for a rate no recording has (see MIN_SAMPLE_RATE)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(where, "bad_sample_rate", f"sample rate {rate} Hz: no recording has it (accepted: "
                         f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz); the header is corrupt or forged")


def header_frames(head: bytes) -> int | None:
    """The number of frames a WAV (RIFF/RF64/BW64) or AIFF header declares, read from the file's
    first bytes; None when it declares none that can be trusted (a streamed WAV's 0 or 0xFFFFFFFF,
    a compressed WAV format, a header cut off). libsndfile reports the frames actually present, so
    a cut-off download would otherwise read as a shorter, complete clip."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return _wav_frames(head)
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return _aiff_frames(head)
    return None


def _chunks(head: bytes, byteorder: str):
    """(id, offset of the body, declared body size) of the chunks after a RIFF/FORM header."""
    pos = 12
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos + 4:pos + 8], byteorder)
        yield head[pos:pos + 4], pos + 8, size
        pos += 8 + size + (size & 1)


def _wav_frames(head: bytes) -> int | None:
    block_align, pcm, data_size = None, False, None
    for chunk, body, size in _chunks(head, "little"):
        if chunk == b"ds64" and len(head) >= body + 16:     # RF64: the real sizes are 64-bit, here
            data_size = int.from_bytes(head[body + 8:body + 16], "little")
        elif chunk == b"fmt " and len(head) >= body + 14:
            fmt_tag = int.from_bytes(head[body:body + 2], "little")
            block_align = int.from_bytes(head[body + 12:body + 14], "little")
            pcm = fmt_tag in (1, 3, 6, 7, 0xFFFE)     # PCM, float, A-law, mu-law, extensible: a frame per block
        elif chunk == b"data":
            if size not in (0, 0xFFFFFFFF):
                data_size = size
            break
    # compressed formats' frame counts (the fact chunk) are written inconsistently by encoders
    if not pcm or not block_align or not data_size:
        return None
    return data_size // block_align


def _aiff_frames(head: bytes) -> int | None:
    for chunk, body, _size in _chunks(head, "big"):
        if chunk == b"COMM" and len(head) >= body + 6:
            return int.from_bytes(head[body + 2:body + 6], "big") or None
    return None


def check_complete(frames: int, declared: int | None, sample_rate: int, where: str) -> None:
    """AudioError "truncated" when fewer frames were decoded than the header declares."""
    if declared and frames < TRUNCATED_FRACTION * declared:
        raise AudioError(where, "truncated", f"truncated: the header declares {declared / sample_rate:.2f} s, "
                         f"only {frames / sample_rate:.2f} s could be decoded (a cut-off download or copy?)")


def sniff_container(head: bytes) -> str | None:
    """Name the container from the first bytes of a file, or None when it is not one we know."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    # Raw MPEG audio: an 11-bit frame sync. Layer bits 01 = layer III (MP3); 00 = ADTS AAC.
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return "aac" if (head[1] & 0x06) == 0 else "mp3"
    return None


def container_of(head: bytes, where: str) -> str:
    """sniff_container, or the AudioError every reader raises for bytes that are not audio."""
    container = sniff_container(head)
    if container is None:
        raise AudioError(
            where, "unknown_container",
            f"not a recognised audio container (first bytes {head[:8].hex(' ')}); "
            "supported: WAV, FLAC, OGG/Vorbis/Opus, MP3, AAC, MP4/M4A, WebM/Matroska, AIFF")
    return container


def describe(source: Source, name: str | None = None) -> str:
    """How messages name a source: the given name, else the path, else what kind of thing it is."""
    if name:
        return name
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    if hasattr(source, "read"):
        return str(getattr(source, "name", "<stream>"))
    return str(source)


NUL_IN_PATH = "the path holds a NUL byte, which no file name can; fix the list or manifest it came from"
SPECIAL_FILE = "not a regular file (FIFO, socket or device): not read"


def is_special(mode: int) -> bool:
    """FIFOs, sockets and devices (also through a symlink): reading one can block forever (a FIFO
    nobody writes) or never end (/dev/zero). Every reader of paths refuses them: featurize,
    `datasets show --decode` and `score`."""
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _read_source(source: Source, where: str) -> bytes:
    """All bytes of the source. Clips are seconds to minutes long; long files are handled by the
    streaming scorer, not here."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    _read_source_checks(source, where)
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise AudioError(where, "not_found", "file not found") from None
    except OSError as e:
        raise AudioError(where, "unreadable", f"cannot read file ({e.strerror or e})") from None


def _read_source_checks(source, where: str) -> None:
    """AudioError for a path that must not be read: NUL in the name, a folder, missing, a FIFO or device."""
    if "\x00" in os.fspath(source):   # the OS refuses such a name: this clip's error, not its block's
        raise AudioError(where, "bad_path", NUL_IN_PATH)
    path = Path(source)
    if path.is_dir():
        raise AudioError(where, "is_directory", "is a directory, expected an audio file")
    try:
        if is_special(os.stat(path).st_mode):
            raise AudioError(where, "special_file", SPECIAL_FILE)
    except FileNotFoundError:
        raise AudioError(where, "not_found", "file not found") from None
    except OSError as e:
        raise AudioError(where, "unreadable", f"cannot read file ({e.strerror or e})") from None


# -- what C decoders print -------------------------------------------------------------------------
# libsndfile's MP3 decoder (libmpg123) writes lines such as "[src/libmpg123/layer3.c:...] error:
# part2_3_length (864) too large" straight to file descriptor 2, where a user reads them as
# dfdetect failing. While any thread decodes, fd 2 points at a temporary file; each decode takes
# what was written during it as its own warnings. Concurrent decodes may share a line, and text
# other threads write to fd 2 meanwhile is taken too (fd 2 is held only while a decoder runs;
# measured cost ~15 us a decode). Lines kept per decode:
MAX_DECODER_LINES = 5
_FD2_LOCK = threading.Lock()
_fd2 = {"users": 0, "saved": None, "sink": None, "pid": None}


@contextlib.contextmanager
def decoder_messages():
    """Capture what C libraries write to fd 2 inside the block: yields a list that holds, on exit,
    the distinct lines written meanwhile (at most MAX_DECODER_LINES)."""
    lines: list[str] = []
    start = _capture_fd2()
    try:
        yield lines
    finally:
        lines += _release_fd2(start)


def _capture_fd2() -> int | None:
    with _FD2_LOCK:
        if _fd2["users"] == 0:
            try:
                sys.stderr.flush()
                if _fd2["pid"] != os.getpid():   # one per process (a forked child gets its own), emptied after use
                    _fd2.update(sink=tempfile.TemporaryFile(), pid=os.getpid())
                saved = os.dup(2)
                os.dup2(_fd2["sink"].fileno(), 2)
            except (OSError, ValueError, AttributeError):   # no fd 2 to redirect: nothing to capture
                return None
            _fd2["saved"] = saved
        _fd2["users"] += 1
        return os.lseek(_fd2["sink"].fileno(), 0, os.SEEK_END)   # writes to fd 2 land at the end


def _release_fd2(start: int | None) -> list[str]:
    if start is None:
        return []
    with _FD2_LOCK:
        sink = _fd2["sink"]
        end = os.lseek(sink.fileno(), 0, os.SEEK_END)
        text = os.pread(sink.fileno(), min(end - start, 1 << 16), start).decode("utf-8", "replace")
        _fd2["users"] -= 1
        if _fd2["users"] == 0:
            os.dup2(_fd2["saved"], 2)
            os.close(_fd2["saved"])
            os.ftruncate(sink.fileno(), 0)
            _fd2["saved"] = None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))[:MAX_DECODER_LINES]


def warning_text(warnings) -> str:
    """A decode's warnings as one table cell (featurize's meta/warning, score's `warning` column)."""
    return "; ".join(warnings)[:1000]


def decode(source: Source, name: str | None = None) -> Audio:
    """Decode a path, bytes or binary stream into float32 samples [channels, frames]."""
    where = describe(source, name)
    ref = _ref_of(source, where)
    if ref is not None:
        return _decode_ref(ref, where)
    data = _read_source(source, where)
    if not data:
        raise AudioError(where, "empty", "empty file (0 bytes)")
    container = container_of(data[:16], where)
    with decoder_messages() as said:
        audio = _decode_bytes(data, container, where)
    return dataclasses.replace(audio, warnings=tuple(said)) if said else audio


def _decode_bytes(data: bytes, container: str, where: str) -> Audio:
    errors = []
    if container in SOUNDFILE_CONTAINERS:
        try:
            check_sample_rate(sf.info(io.BytesIO(data)).samplerate, where)   # before reading the samples
        except (sf.LibsndfileError, RuntimeError, ValueError):
            pass   # what libsndfile cannot open, FFmpeg may read (below)
        try:
            audio = _decode_soundfile(data, container)
            check_complete(audio.frames, header_frames(data[:HEADER_BYTES]), audio.sample_rate, where)
            return audio
        except sf.LibsndfileError as e:
            errors.append(f"libsndfile: {e.error_string}")
        except (RuntimeError, ValueError) as e:
            errors.append(f"libsndfile: {e}")
    try:
        audio = _decode_ffmpeg(data, container)
        check_sample_rate(audio.sample_rate, where)
        return audio
    except AudioError:
        raise
    except _NoAudio as e:
        raise AudioError(where, "no_audio", str(e)) from None
    except Exception as e:  # FFmpeg raises many types for broken bytes; all mean "cannot decode"
        errors.append(f"ffmpeg: {getattr(e, 'strerror', None) or e}")
    raise AudioError(where, "decode_failed", f"cannot decode {container} data ({'; '.join(errors)})")


def _ref_of(source: Source, where: str) -> refs.AudioRef | None:
    try:
        return refs.parse(source)
    except refs.RefError as e:
        raise AudioError(where, e.kind, str(e)) from None


def _decode_ref(ref: refs.AudioRef, where: str) -> Audio:
    """A clip the datasets layer points at (`datasets/refs.py`): bytes inside an Arrow/Parquet
    table, or channels / a segment of a file; decoded like any other bytes, then cut."""
    try:
        data = refs.read_bytes(ref)
        segment = _read_segment(ref, where) if data is None and not ref.whole else None
        if segment is not None:
            return segment
        audio = decode(ref.file if data is None else data, where)
        if ref.whole:
            return audio
        samples = refs.select(audio.samples, audio.sample_rate, ref)
    except refs.RefError as e:
        raise AudioError(where, e.kind, str(e)) from None
    return Audio(np.ascontiguousarray(samples), audio.sample_rate, audio.container, audio.warnings)


def _read_segment(ref: refs.AudioRef, where: str) -> Audio | None:
    """Only the frames of `ref`'s segment of a file libsndfile reads (WAV, FLAC, OGG, MP3, AIFF):
    seek, then read (a recording with 60 supervisions is decoded 60 times otherwise). None for what
    it cannot seek in: the whole file is decoded, then cut."""
    _read_source_checks(ref.file, where)
    with open(ref.file, "rb") as f:
        head = f.read(HEADER_BYTES)
    container, declared = sniff_container(head[:16]), header_frames(head)
    if container not in SEEKABLE_CONTAINERS:
        return None
    try:
        with sf.SoundFile(ref.file) as f:
            rate = f.samplerate
            check_sample_rate(rate, where)
            if declared is not None and f.frames < TRUNCATED_FRACTION * declared:
                return None   # cut off: the whole-file path names it truncated
            first, last = refs.segment_frames(ref, rate, f.frames)
            f.seek(first)
            samples = f.read(last - first, dtype="float32", always_2d=True).T
    except (sf.LibsndfileError, RuntimeError, ValueError):   # unseekable or damaged: the whole-file path says why
        return None
    if samples.shape[1] < last - first:
        return None   # fewer frames than the header counts (cut off): the whole-file path says so
    return Audio(np.ascontiguousarray(refs.select_channels(samples, ref)), rate, container)


class _NoAudio(Exception):
    pass


def _decode_soundfile(data: bytes, container: str) -> Audio:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return Audio(np.ascontiguousarray(samples.T), int(rate), container)


def _decode_ffmpeg(data: bytes, container: str) -> Audio:
    import av  # imported lazily: FFmpeg's libraries are large and most corpora are WAV/FLAC

    with av.open(io.BytesIO(data), mode="r") as f:
        if not f.streams.audio:
            raise _NoAudio(f"{container} container has no audio stream")
        stream = f.streams.audio[0]
        chunks, rate = [], None
        for frame in f.decode(stream):
            block = frame.to_ndarray()
            if frame.format.is_planar:
                block = block.reshape(len(frame.layout.channels), -1)
            else:  # packed: samples interleaved in one row
                block = block.reshape(-1, len(frame.layout.channels)).T
            chunks.append(_to_float32(block))
            rate = frame.sample_rate
    if not chunks:
        raise _NoAudio(f"{container} audio stream holds no samples")
    return Audio(np.ascontiguousarray(np.concatenate(chunks, axis=1)), int(rate), container)


def _to_float32(block: np.ndarray) -> np.ndarray:
    if block.dtype.kind == "f":
        return block.astype(np.float32, copy=False)
    if block.dtype.kind == "u":  # unsigned 8-bit PCM is centred on 128
        half = float(np.iinfo(block.dtype).max + 1) / 2
        return ((block.astype(np.float32) - half) / half).astype(np.float32)
    return (block.astype(np.float32) / float(-np.iinfo(block.dtype).min)).astype(np.float32)


# -- encoding ---------------------------------------------------------------------------------
# name -> (soundfile format, subtype) for what libsndfile writes; the rest go through FFmpeg.
_SOUNDFILE_WRITERS = {
    "wav": ("WAV", "PCM_16"),
    "wav_u8": ("WAV", "PCM_U8"),
    "wav_s24": ("WAV", "PCM_24"),
    "wav_s32": ("WAV", "PCM_32"),
    "wav_f32": ("WAV", "FLOAT"),
    "wav_f64": ("WAV", "DOUBLE"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}
# name -> (FFmpeg container, codec). MP3 and Opus go through FFmpeg too when a bitrate is asked
# for (libsndfile has no bitrate setting). Vorbis ("ogg") never does: FFmpeg's own Vorbis encoder
# is experimental (stereo only, deaf to bit_rate); libvorbis, through libsndfile, takes a quality
# level instead, chosen for the bitrate asked (`_vorbis_level`).
_FFMPEG_WRITERS = {"m4a": ("ipod", "aac"), "mp4": ("mp4", "aac"), "aac": ("adts", "aac"),
                   "mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus")}
ENCODINGS = tuple(dict.fromkeys((*_SOUNDFILE_WRITERS, *_FFMPEG_WRITERS)))
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def encode(samples: np.ndarray, sample_rate: int, fmt: str, bitrate: int | None = None) -> bytes:
    """Encode float samples [channels, frames] (or [frames]) in `fmt` (see ENCODINGS).

    Used for demo corpora, test fixtures and codec variants: one real encoder per format, so a lossy
    format really removes what its codec removes. Opus only runs at 8/12/16/24/48 kHz."""
    x = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    if fmt in _SOUNDFILE_WRITERS and not (bitrate and fmt in _FFMPEG_WRITERS):
        if fmt == "opus" and sample_rate not in OPUS_RATES:
            raise ConfigError(f"opus needs a sample rate in {OPUS_RATES}, got {sample_rate}")
        container, subtype = _SOUNDFILE_WRITERS[fmt]
        level = {"compression_level": _vorbis_level(sample_rate, len(x), bitrate)} if fmt == "ogg" and bitrate else {}
        buf = io.BytesIO()
        sf.write(buf, x.T, sample_rate, format=container, subtype=subtype, **level)
        return buf.getvalue()
    if fmt not in _FFMPEG_WRITERS:
        raise ConfigError(f"unknown encoding {fmt!r}; choose one of {', '.join(ENCODINGS)}")
    import av

    container, codec = _FFMPEG_WRITERS[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout="mono" if len(x) == 1 else "stereo")
        if bitrate:
            stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(
            np.clip(x, -1, 1), format="fltp", layout="mono" if len(x) == 1 else "stereo"
        )
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def vorbis_nominal_bitrate(data: bytes) -> int:
    """The nominal bitrate (bit/s) a Vorbis stream's identification header declares."""
    at = data.find(b"\x01vorbis")
    if at < 0:
        raise ValueError("no Vorbis identification header")
    return int.from_bytes(data[at + 20:at + 24], "little", signed=True)


@functools.lru_cache(maxsize=16)
def _vorbis_levels(sample_rate: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(nominal bitrates ascending, libsndfile compression levels): libvorbis's quality scale at
    this rate and channel count, read from the headers of tiny encodes (its range depends on both:
    24-100 kbit/s for 16 kHz mono)."""
    levels = np.linspace(0, 1, 21)
    rates = []
    for level in levels:
        buf = io.BytesIO()
        sf.write(buf, np.zeros((sample_rate // 10, channels), np.float32), sample_rate, format="OGG",
                 subtype="VORBIS", compression_level=float(level))
        rates.append(vorbis_nominal_bitrate(buf.getvalue()))
    return np.array(rates[::-1], float), levels[::-1]


def _vorbis_level(sample_rate: int, channels: int, bitrate: int) -> float:
    """The compression level whose nominal bitrate is `bitrate` (clamped to libvorbis's range)."""
    rates, levels = _vorbis_levels(sample_rate, channels)
    return float(np.interp(bitrate, rates, levels))
