"""Streaming decode: a recording of any length -> 16 kHz mono blocks -> sliding windows, in memory
bounded by one block plus one window.

`audio.decode` reads a whole file, which is right for clips and wrong for a three-hour recording.
Here the same containers (sniffed with `audio.sniff_container`, never trusting the name) are read
block by block: libsndfile for WAV/FLAC/OGG/MP3/AIFF, FFmpeg (PyAV) frame by frame for MP4/M4A/AAC/
WebM and whatever libsndfile refuses to open. Blocks are mixed to mono and resampled with a soxr
stream, so the samples are exactly those of `Frontend.to_mono_16k(decode(...))` (the same float64
channel mean and soxr quality; soxr's stream reproduces its one-shot result), and problems raise the
same `AudioError` kinds, plus "truncated" (the decoder stopped before the length the header declares,
or failed mid-stream), "too_long" and "unsupported_codec".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from dfdetect.featurize.audio import (
    HEADER_BYTES,
    SOUNDFILE_CONTAINERS,
    AudioError,
    check_complete,
    check_sample_rate,
    container_of,
    decoder_messages,
    header_frames,
)
from dfdetect.featurize.frontend import FrontendConfig

BLOCK_FRAMES = 1 << 16   # source frames per block: ~1.4 s at 48 kHz, 64 channels would be 16 MiB
MP3_FRAME = 1152         # samples per MPEG-1 Layer III frame (MPEG-2/2.5 frames hold 576: a divisor)


@dataclass(frozen=True)
class StreamInfo:
    sample_rate: int
    channels: int
    container: str
    declared_frames: int | None   # what the header says; None when it says nothing reliable


class AudioStream:
    """One open source, read once through `blocks()`.

    `source` is a seekable binary stream (an open file or an archive member). `max_seconds` stops a
    recording longer than that with AudioError "too_long", from the header when it declares a length
    and while decoding when it does not."""

    def __init__(self, source: BinaryIO, where: str, config: FrontendConfig = FrontendConfig(),
                 max_seconds: float | None = None, block_frames: int = BLOCK_FRAMES):
        self.where, self.config, self.max_seconds, self.block_frames = where, config, max_seconds, block_frames
        self.frames = 0  # source frames decoded so far
        head = source.read(HEADER_BYTES)
        source.seek(0)
        if not head:
            raise AudioError(where, "empty", "empty file (0 bytes)")
        container = container_of(head, where)
        self._reader = None
        if container in SOUNDFILE_CONTAINERS:
            try:
                self._reader = _SoundfileReader(source, container, header_frames(head))
            except (sf.LibsndfileError, RuntimeError, ValueError):
                source.seek(0)  # as in decode(): what libsndfile refuses, FFmpeg may read
        if self._reader is None:
            self._reader = _FFmpegReader(source, container, where)
        self.info = self._reader.info
        check_sample_rate(self.info.sample_rate, where)
        # blocks are counted in source frames; sized so that one block is at most BLOCK_FRAMES
        # samples at the frontend's rate too (upsampling multiplies them)
        self.block_frames = max(1, min(block_frames, block_frames * self.info.sample_rate // config.sample_rate))
        if container == "mp3" and isinstance(self._reader, _SoundfileReader):
            # whole MPEG frames per read: libmpg123 (through libsndfile) misdecodes some frames at a read
            # that ends inside one ("part2_3_length too large"), where a whole-file decode() does not
            self.block_frames = max(MP3_FRAME, self.block_frames // MP3_FRAME * MP3_FRAME)
        declared = self.info.declared_frames
        if max_seconds is not None and declared and declared / self.info.sample_rate > max_seconds:
            raise self._too_long(declared)

    @property
    def warnings(self) -> list[str]:
        """What the decoder library said about damage it decoded past (libmpg123's lines)."""
        return getattr(self._reader, "warnings", [])

    @property
    def seconds(self) -> float:
        """Duration decoded so far (the whole file once `blocks()` is exhausted)."""
        return self.frames / self.info.sample_rate

    def _too_long(self, frames: int) -> AudioError:
        return AudioError(self.where, "too_long", f"longer than the {self.max_seconds / 3600:g} h limit "
                          f"(--max-hours): at least {frames / self.info.sample_rate / 3600:.2f} h")

    def blocks(self) -> Iterator[np.ndarray]:
        """Mono float32 blocks at the frontend's rate: the streaming form of Frontend.to_mono_16k."""
        c, rate = self.config, self.info.sample_rate
        resampler = (soxr.ResampleStream(rate, c.sample_rate, 1, dtype="float32", quality=c.resample_quality)
                     if rate != c.sample_rate else None)
        limit = None if self.max_seconds is None else self.max_seconds * rate
        for block in self._reader.blocks(self.block_frames, self):
            if not np.isfinite(block).all():
                raise AudioError(self.where, "non_finite", f"NaN or Inf samples near {self.seconds:.2f} s; "
                                 "the file is corrupt")
            self.frames += block.shape[1]
            if limit is not None and self.frames > limit:
                raise self._too_long(self.frames)
            mono = block.mean(axis=0, dtype=np.float64).astype(np.float32)
            out = resampler.resample_chunk(mono) if resampler else mono
            if len(out):
                yield out
        self._check_complete()
        if resampler:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail

    def _check_complete(self) -> None:
        declared, seconds = self.info.declared_frames, self.seconds
        if self.frames == 0:
            raise AudioError(self.where, "too_short", "no audio samples (zero-length clip)")
        check_complete(self.frames, declared, self.info.sample_rate, self.where)
        if seconds < self.config.min_seconds:
            raise AudioError(self.where, "too_short", f"too short: {self.frames} samples ({seconds * 1000:.1f} ms "
                             f"at {self.info.sample_rate} Hz); at least {self.config.min_seconds * 1000:.0f} ms "
                             "is needed")

    def truncated(self, reason: str) -> AudioError:
        """A decoder that failed after the start: what was decoded is not the whole file."""
        return AudioError(self.where, "truncated", f"truncated or corrupt: decoding failed after "
                          f"{self.seconds:.2f} s ({reason})")


class _SoundfileReader:
    def __init__(self, source: BinaryIO, container: str, header: int | None):
        # libmpg123's lines on fd 2 become this file's warnings (audio.decoder_messages), not terminal noise
        self.warnings: list[str] = []
        with decoder_messages() as said:
            self._file = sf.SoundFile(source)
        self.warnings += said
        f = self._file
        # libsndfile counts the WAV/AIFF frames present, so the header's own count (`header`) is the
        # declared length. MP3 lengths are estimated from the file size unless a Xing/Info header
        # gives them exactly; the estimate is still a fair check, as truncation removes far more than 1%.
        self.info = StreamInfo(f.samplerate, f.channels, container, header or (f.frames if f.frames > 0 else None))

    def blocks(self, frames: int, stream: AudioStream) -> Iterator[np.ndarray]:
        with self._file as f:
            while True:
                try:
                    # read() until it returns nothing: blocks() would pad a short file to the header's length
                    with decoder_messages() as said:
                        block = f.read(frames, dtype="float32", always_2d=True)
                    self.warnings += said
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise stream.truncated(f"libsndfile: {getattr(e, 'error_string', e)}") from None
                if not len(block):
                    return
                yield block.T


class _FFmpegReader:
    def __init__(self, source: BinaryIO, container: str, where: str):
        import av  # lazily, as in audio.py

        self._av = av
        try:
            self._file = av.open(source, mode="r")
        except Exception as e:  # FFmpeg raises many types for bytes it cannot parse
            raise AudioError(where, "decode_failed", f"cannot decode {container} data "
                             f"(ffmpeg: {getattr(e, 'strerror', None) or e})") from None
        if not self._file.streams.audio:
            self._file.close()
            raise AudioError(where, "no_audio", f"{container} container has no audio stream")
        self._stream = s = self._file.streams.audio[0]
        if s.codec_context is None:
            self._file.close()
            raise AudioError(where, "unsupported_codec", f"no decoder for the audio codec of this {container} "
                             "file (FFmpeg has none for it)")
        declared = None
        if s.duration and s.time_base:
            declared = int(s.duration * s.time_base * s.codec_context.sample_rate)
        self.info = StreamInfo(s.codec_context.sample_rate, len(s.codec_context.layout.channels), container, declared)

    def blocks(self, frames: int, stream: AudioStream) -> Iterator[np.ndarray]:
        """Codec frames (~1,000 samples each) gathered into blocks of about `frames`. They come in
        the codec's sample format; the resampler only converts them to float planar (FFmpeg's own
        int -> float scaling, the same as decode()'s), keeping rate and channels."""
        to_float = self._av.AudioResampler(format="fltp")
        gathered, count = [], 0
        with self._file as f:
            try:
                for frame in f.decode(self._stream):
                    for converted in to_float.resample(frame):
                        gathered.append(converted.to_ndarray())
                        count += gathered[-1].shape[1]
                    if count >= frames:
                        yield np.concatenate(gathered, axis=1)
                        gathered, count = [], 0
            except self._av.error.DecoderNotFoundError:
                raise AudioError(stream.where, "unsupported_codec", "no decoder for this audio codec") from None
            except Exception as e:  # corrupt packets: FFmpeg raises many types
                raise stream.truncated(f"ffmpeg: {getattr(e, 'strerror', None) or e}") from None
        if gathered:
            yield np.concatenate(gathered, axis=1)
