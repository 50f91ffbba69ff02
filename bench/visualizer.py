"""Render time of ``visualize_audio``'s core on this machine (no queue, no object store).

    .venv/bin/python bench/visualizer.py [--seconds 60] [--size 1280x720] [--fps 30] [--styles spectrum,waveform,particles]

Synthesises a song-like track (a chord progression, a kick on every beat, a hi-hat noise on the
off-beats, a quiet bridge), writes it as a 44.1 kHz stereo WAV and renders it with the title and
timed lyrics, as the task does; prints per style the wall time, the realtime factor (render
time / track length: below 1 is faster than real time) and the CPU seconds spent in this process
and in ffmpeg (what the render costs, whatever else the machine is running: the load average is
printed too).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from dualplane.ml.audio import wav_bytes
from dualplane.tasks.visualizer import VisualizerParams, render

RATE = 44100


def song(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (196.0, 246.9, 311.1)]
    which = (t // 2).astype(int) % len(chords)
    tone = sum(np.sin(2 * np.pi * np.array([c[k] for c in chords])[which] * t) for k in range(3)) / 6
    beat = t % 0.5
    kick = np.sin(2 * np.pi * 60 * beat) * np.exp(-beat * 18)
    hat = np.random.default_rng(1).standard_normal(t.size) * np.exp(-((t + 0.25) % 0.5) * 60) * 0.15
    mix = 0.5 * tone + 0.6 * kick + hat
    bridge = (t > seconds * 0.55) & (t < seconds * 0.7)
    mix[bridge] *= 0.2
    return np.stack([mix, mix]) * 0.7


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (the ffmpeg encoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--styles", default="spectrum,waveform,particles")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    lyrics = "\n".join(f"line {i} of a song about a rainy night" for i in range(int(args.seconds // 4)))
    with tempfile.TemporaryDirectory(prefix="bench-vis-") as tmp:
        audio = Path(tmp, "song.wav")
        audio.write_bytes(wav_bytes(song(args.seconds), RATE))
        print(f"{args.seconds:.0f} s of audio, {width}x{height} at {args.fps} fps; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        for style in args.styles.split(","):
            p = VisualizerParams(audio="bench/song.wav", width=width, height=height, fps=args.fps, style=style,
                                 palette="rainy night", title="Rainy Night", lyrics=lyrics)
            out = Path(tmp, f"{style}.mp4")
            cpu_before, started = cpu_s(), time.perf_counter()
            done = render(audio, out, p)
            took, cpu = time.perf_counter() - started, cpu_s() - cpu_before
            print(f"{style:10s} {done.frames} frames in {took:6.1f} s = {done.frames / took:6.1f} fps, "
                  f"realtime factor {took / args.seconds:.2f}; CPU {cpu:.1f} s "
                  f"({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
