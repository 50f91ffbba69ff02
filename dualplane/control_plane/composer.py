"""Brief → graph, by capability: each wanted part adds the nodes that make it, wired by ``$ref``,
and the parts are joined by the right mix (``mix_audio``) or mux (``mux_media``).

Nothing here is a template: a brief with narration over a music bed and a video, a trained voice
singing, or a LoRA then a video all come from the same steps. Every way the plan differs from
the brief is a note (clamped, substituted, impossible, random weights, unavailable), and every
number the composer derives is kept inside the target task's params schema (the bounds are read
from the catalog), so a planned graph never fails validation inside a node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dualplane.common.graph import validate_graph
from dualplane.common.models.brief import Brief
from dualplane.common.registry import TaskRegistry
from dualplane.tasks.lyrics import pick_theme

#: Length of a piece when the brief names none.
DEFAULT_DURATION_S = 30.0
#: The voice spoken text gets unless a trained one is asked for (a real CC0 Piper voice).
DEFAULT_VOICE_MODEL = "piper-joe"
#: What a trained voice (a SpeechT5 speaker embedding) is spoken by.
TRAINED_VOICE_MODEL = "speecht5-tts"
#: Models each generator needs (their weights decide "real" or "random").
GENERATOR_MODELS = {"generate_music": ("musicgen-small",), "render_video": ("sd15", "animatediff-motion-adapter"),
                    "train_lora": ("sd15",), "train_voice": ("speecht5-tts",), "synthesize_voice": ()}
#: Height of a generated video whose models have random (test-only) weights: the frames are noise,
#: so they are kept cheap.
RANDOM_WEIGHTS_HEIGHT = 64
#: The piece's voices and beds: the tasks that output an ``audio`` key.
_ASPECTS = {"16:9": (16, 9), "9:16": (9, 16), "1:1": (1, 1), "4:3": (4, 3), "3:4": (3, 4), "21:9": (21, 9),
            "4:5": (4, 5), "5:4": (5, 4), "3:2": (3, 2), "2:3": (2, 3)}


@dataclass(frozen=True)
class Capabilities:
    """What the live data plane offers: the tasks of its pools, and per model whether its weights
    are real or the test-only random ones. ``python_tasks`` None: nothing is known (no worker is
    live, or the manifests could not be read) — the plan says so."""

    python_tasks: frozenset[str] | None = None
    model_weights: Mapping[str, str] = field(default_factory=dict)
    model_limits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def from_manifests(cls, manifests: Iterable[Any], limits: Mapping[str, Mapping[str, float]] | None = None,
                       ) -> Capabilities:
        tasks: set[str] = set()
        weights: dict[str, str] = {}
        seen = False
        for manifest in manifests:
            if getattr(manifest, "plane", None) is not None and str(getattr(manifest.plane, "value", manifest.plane)) \
                    != "python":
                continue
            seen = True
            tasks.update(manifest.tasks)
            for model in getattr(manifest, "models", None) or []:
                name, value = _model_fields(model)
                # one worker with real weights is enough: the router can send the node there
                if weights.get(name) != "real":
                    weights[name] = value
        return cls(python_tasks=frozenset(tasks) if seen else None, model_weights=weights,
                   model_limits=dict(limits or {}))

    def weights(self, model: str) -> str:
        return self.model_weights.get(model, "unknown")


def _model_fields(model: Any) -> tuple[str, str]:
    if isinstance(model, Mapping):
        return str(model["name"]), str(model.get("weights", "unknown"))
    weights = getattr(model, "weights", "unknown")
    return str(model.name), str(getattr(weights, "value", weights))


@dataclass
class Composition:
    graph: dict[str, Any]
    notes: list[dict[str, Any]]


class Composer:
    """Builds graphs from briefs against a task catalog (bounds) and the live capabilities."""

    def __init__(self, registry: TaskRegistry) -> None:
        self._registry = registry

    def compose(self, brief: Brief, capabilities: Capabilities | None = None) -> Composition:
        build = _Build(self._registry, brief, capabilities or Capabilities())
        build.run()
        if not build.nodes:
            raise Unplannable(brief, build.notes)
        graph = {"intent": brief.prompt[:4000], "nodes": build.nodes,
                 "metadata": {"brief": brief.model_dump(mode="json", exclude={"notes"}), "planner": "composer"}}
        validate_graph(graph, self._registry)
        return Composition(graph=graph, notes=build.notes)


class _Build:
    """One composition: nodes and notes accumulate as each part is added."""

    def __init__(self, registry: TaskRegistry, brief: Brief, caps: Capabilities) -> None:
        self.registry = registry
        self.brief = brief
        self.caps = caps
        self.nodes: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = [n.model_dump(mode="json") for n in brief.notes]
        self._noted: set[tuple[str, str | None, str]] = {(n["kind"], n["part"], n["message"]) for n in self.notes}

    # -- helpers -----------------------------------------------------------------------------

    def note(self, kind: str, part: str | None, message: str) -> None:
        if (kind, part, message) not in self._noted:
            self._noted.add((kind, part, message))
            self.notes.append({"kind": kind, "part": part, "message": message})

    def add(self, node_id: str, task: str, params: dict[str, Any], needs: Iterable[str] = ()) -> str:
        spec = self.registry.get(task)
        if spec is None:  # the catalog lacks it: say so instead of planning a node that cannot run
            raise MissingTask(task)
        node: dict[str, Any] = {"id": node_id, "task": task, "plane": spec.plane,
                                "params": {k: v for k, v in params.items() if v is not None}}
        needs = list(dict.fromkeys(needs))
        if needs:
            node["needs"] = needs
        self.nodes.append(node)
        if spec.plane == "python":
            self._check_offered(task, node_id)
        return node_id

    def _check_offered(self, task: str, node_id: str) -> None:
        if self.caps.python_tasks is None:
            self.note("unavailable", None, "no data-plane worker is live right now: the python nodes wait in "
                                           "their queues until one starts")
        elif task not in self.caps.python_tasks:
            self.note("unavailable", _part_of(node_id),
                      f"no live worker offers {task}: node {node_id!r} waits until one that does starts")

    def bound(self, task: str, param: str, which: str) -> float | None:
        """A params schema bound of ``task.param`` (``maximum`` / ``minimum`` / ``maxLength``)."""
        spec = self.registry.get(task)
        if spec is None:
            return None
        prop = spec.params.model_json_schema().get("properties", {}).get(param, {})
        for option in [prop, *prop.get("anyOf", [])]:
            if which in option:
                return float(option[which])
            if which == "maximum" and "exclusiveMaximum" in option:
                return float(option["exclusiveMaximum"])
        return None

    def limit(self, model: str, name: str) -> float | None:
        return self.caps.model_limits.get(model, {}).get(name)

    def weights_note(self, part: str, task: str, models: Iterable[str]) -> bool:
        """Note (and return True) when a part runs on test-only random weights."""
        random_ = [m for m in models if self.caps.weights(m) == "random"]
        if random_:
            if self.brief.constraints.real_weights_only:
                self.note("impossible", part, f"{task} would run on test-only random weights "
                                              f"({', '.join(random_)}) and real weights were required")
            else:
                self.note("random_weights", part, f"{task} runs on test-only random weights ({', '.join(random_)}): "
                                                  f"its output is noise until real weights are pulled "
                                                  f"(`dualplane models pull`)")
            return True
        return False

    # -- the parts ---------------------------------------------------------------------------

    def run(self) -> None:
        brief = self.brief
        duration = self._duration()
        song = self._song(duration) if brief.music or brief.vocals else None
        voice = self._voice_training()
        lora = self._style_training()
        for index in range(brief.variations):
            suffix = "" if index == 0 else f"-{index + 1}"
            seed = (brief.seed or 0) + index if brief.seed is not None or index else None
            self._branch(suffix, seed, duration, song, voice, lora)
        if brief.variations > 1:
            self.note("assumed", None, f"{brief.variations} versions: each has its own seed and shares the song "
                                       f"plan and any trained voice or style")

    def _duration(self) -> float:
        brief = self.brief
        wanted = brief.duration_s or (brief.music.duration_s if brief.music else None) or (
            brief.video.duration_s if brief.video else None)
        if wanted is None:
            spoken_only = not brief.music and not brief.video and (brief.narration or brief.vocals)
            if not spoken_only:
                self.note("assumed", None, f"no length given: {DEFAULT_DURATION_S:g} s")
            return DEFAULT_DURATION_S
        longest = self.bound("plan_song", "duration_s", "maximum") or 600.0
        if wanted > longest:
            self.note("clamped", None, f"asked for {wanted:g} s; the longest the generators support here is "
                                       f"{longest:g} s")
            return longest
        return float(wanted)

    def _song(self, duration: float) -> str:
        brief = self.brief
        music, vocals = brief.music, brief.vocals
        params: dict[str, Any] = {"narrative": (brief.theme or brief.prompt)[:2000], "duration_s": duration,
                                  "seed": brief.seed or 0, "title": brief.title,
                                  "mode": "lyrics-first" if vocals else "melody-only"}
        if music:
            params.update(style=music.genre, key=music.key, moods=list(music.moods)[:8],
                          instrumentation=list(music.instrumentation)[:16], without=list(music.without)[:16])
            if music.tempo_bpm is not None:
                params["bpm"] = self._tempo(music.tempo_bpm)
        if vocals:
            params["sung_sections"] = [s.value for s in vocals.sections]
            if vocals.lyrics.source.value == "given" and vocals.lyrics.text:
                cap = int(self.bound("plan_song", "lyrics", "maxLength") or 2000)
                text = vocals.lyrics.text
                if len(text) > cap:
                    self.note("clamped", "vocals", f"the lyrics are {len(text)} characters; the first {cap} are used")
                    text = text[:cap]
                params["lyrics"] = text
            elif vocals.lyrics.language != "en":
                self.note("substituted", "vocals", f"lyrics are written in English: the lyric writer has no "
                                                   f"{vocals.lyrics.language!r} bank")
        return self.add("song", "plan_song", params)

    def _tempo(self, bpm: int) -> int:
        low, high = 40, 240  # the arranger's range (its plan model's bounds)
        if not low <= bpm <= high:
            clamped = min(high, max(low, bpm))
            self.note("clamped", "music", f"tempo {bpm} bpm is outside {low}–{high} bpm: {clamped} bpm")
            return clamped
        return bpm

    def _voice_training(self) -> str | None:
        training = self.brief.voice_training
        if training is None:
            return None
        if not training.clips:
            self.note("impossible", "voice_training", "a voice of your own needs recordings of it: upload voice "
                                                      "clips (WAV); the default voice is used meanwhile")
            return None
        self.weights_note("voice_training", "train_voice", GENERATOR_MODELS["train_voice"])
        params: dict[str, Any] = {"clips": list(training.clips)}
        if training.transcripts and len(training.transcripts) == len(training.clips):
            params["transcripts"] = list(training.transcripts)
        return self.add("voice", "train_voice", params)

    def _style_training(self) -> str | None:
        training = self.brief.style_training
        if training is None:
            return None
        if not training.images:
            self.note("impossible", "style_training", "a trained style (LoRA) needs images to learn from: upload "
                                                      "them; the video is rendered without it meanwhile")
            return None
        self.weights_note("style_training", "train_lora", GENERATOR_MODELS["train_lora"])
        return self.add("lora", "train_lora", {"images": list(training.images),
                                               "instance_prompt": training.instance_prompt or "sks style"})

    def _branch(self, suffix: str, seed: int | None, duration: float, song: str | None, voice: str | None,
                lora: str | None) -> None:
        brief = self.brief
        bed = self._music(suffix, seed, duration, song) if brief.music else None
        voices: list[tuple[str, float | dict[str, str]]] = []
        if brief.vocals:
            voices.append((self._vocals(suffix, seed, song, voice), {"$ref": f"{song}.output.sections"}))
        if brief.narration:
            voices.append((self._narration(suffix, seed, voice), brief.narration.start_s))
        video = self._video(suffix, seed, duration, song, bed, voices, lora) if brief.video else None
        if brief.stills:
            self._stills(suffix, seed, lora)
        self._assemble(suffix, bed, voices, video, song)

    def _music(self, suffix: str, seed: int | None, duration: float, song: str | None) -> str:
        music = self.brief.music
        assert music is not None and song is not None
        generator = music.generator.value
        musicgen_real = self.caps.weights("musicgen-small") == "real"
        if generator == "auto":
            # the arrangement plays the plan exactly (key, tempo, chords, a melody on the lyrics);
            # MusicGen only when it has real weights and nothing asks for what only the plan carries
            exact = music.key or music.tempo_bpm or self.brief.vocals
            generator = "musicgen" if musicgen_real and not exact else "arrangement"
        node = f"music{suffix}"
        if generator == "musicgen":
            longest = self.bound("generate_music", "duration_s", "maximum") or duration
            if duration > longest:
                self.note("clamped", "music", f"MusicGen makes at most {longest:g} s here: {longest:g} s")
            self.weights_note("music", "generate_music", GENERATOR_MODELS["generate_music"])
            params = {"prompt": {"$ref": f"{song}.output.music_prompt"}, "duration_s": min(duration, longest),
                      "seed": seed}
            return self.add(node, "generate_music", params, needs=[song])
        longest = self.bound("arrange_music", "duration_s", "maximum") or duration
        if duration > longest:
            self.note("clamped", "music", f"the arranger makes at most {longest:g} s: {longest:g} s")
        return self.add(node, "arrange_music", {"plan": {"$ref": f"{song}.output"},
                                                "duration_s": min(duration, longest), "seed": seed or 0},
                        needs=[song])

    def _voice_params(self, part: str, voice: str | None, language: str) -> dict[str, Any]:
        if language != "en":
            self.note("substituted", part, f"the words are in {language!r} but the voice speaks English "
                                           f"(en-US): they are read with English pronunciation")
        if voice is not None:
            return {"voice": {"$ref": f"{voice}.output.voice"}, "model": TRAINED_VOICE_MODEL}
        self.weights_note(part, "synthesize_voice", (DEFAULT_VOICE_MODEL,))
        return {"model": DEFAULT_VOICE_MODEL}

    def _vocals(self, suffix: str, seed: int | None, song: str | None, voice: str | None) -> str:
        vocals = self.brief.vocals
        assert vocals is not None and song is not None
        if vocals.delivery.value == "sung":
            self.note("substituted", "vocals", "no singing synthesis here: the lyrics are spoken in time over the "
                                               "arrangement, whose lead melody carries the sung line")
        wanted_trained = vocals.voice.value == "trained"
        params = {"text": {"$ref": f"{song}.output.lyrics_text"}, "seed": seed or 0,
                  **self._voice_params("vocals", voice if wanted_trained else None, vocals.lyrics.language)}
        needs = [song] + ([voice] if voice and wanted_trained else [])
        return self.add(f"vocals{suffix}", "synthesize_voice", params, needs=needs)

    def _narration(self, suffix: str, seed: int | None, voice: str | None) -> str:
        narration = self.brief.narration
        assert narration is not None
        cap = int(self.bound("synthesize_voice", "text", "maxLength") or 2000)
        if narration.text.source.value == "given" and narration.text.text:
            text = narration.text.text
            if len(text) > cap:
                self.note("clamped", "narration", f"the text is {len(text)} characters; the first {cap} are read")
                text = text[:cap]
        else:
            text = write_narration(self.brief)
            self.note("assumed", "narration", f"no words were given: the narration says {text!r}")
        wanted_trained = narration.voice.value == "trained"
        params = {"text": text, "seed": seed or 0, "speed": narration.speed,
                  **self._voice_params("narration", voice if wanted_trained else None, narration.text.language)}
        return self.add(f"narration{suffix}", "synthesize_voice", params,
                        needs=[voice] if voice and wanted_trained else [])

    def _video(self, suffix: str, seed: int | None, duration: float, song: str | None, bed: str | None,
               voices: list[tuple[str, Any]], lora: str | None) -> str:
        video = self.brief.video
        assert video is not None
        kind = video.kind.value
        sound = bed or (voices[0][0] if voices else None)
        generated_real = all(self.caps.weights(m) == "real" for m in GENERATOR_MODELS["render_video"])
        if kind == "visualizer" and sound is None:
            self.note("substituted", "video", "a visualizer needs audio and none was asked for: the video is "
                                              "generated from the prompt instead")
            kind = "generated"
        if kind == "visualizer" and lora:
            self.note("ignored", "style_training", "a visualizer does not use a trained style")
        if kind == "auto":
            if lora or sound is None or generated_real:
                kind = "generated"
            else:
                kind = "visualizer"
                self.note("assumed", "video", "an audio-reactive lyric visualizer: the video generator "
                                              "(AnimateDiff) has no real weights here")
        if kind == "generated":
            return self._generated_video(suffix, seed, duration, song, lora)
        assert sound is not None  # a visualizer without audio became "generated" above
        return self._visualizer(suffix, seed, duration, song, sound)

    def _size(self, task: str, models: Iterable[str], default_height: int, *, part: str) -> tuple[int, int]:
        video = self.brief.video
        aspect = video.aspect if video else "16:9"
        a, b = _ASPECTS.get(aspect, (16, 9))
        height: float = (video.height if video and video.height else None) or default_height
        max_w = min([self.limit(m, "max_width") or 1e9 for m in models] + [self.bound(task, "width", "maximum") or 1e9])
        max_h = min([self.limit(m, "max_height") or 1e9 for m in models]
                    + [self.bound(task, "height", "maximum") or 1e9])
        min_side = max(self.bound(task, "width", "minimum") or 16, self.bound(task, "height", "minimum") or 16)
        multiple = 8 if task == "render_video" else 2
        width = height * a / b
        scale = min(1.0, max_w / width, max_h / height)
        if scale < 1.0:
            self.note("clamped", part, f"{int(width)}x{height} is more than {task} renders here: "
                                       f"{int(width * scale)}x{int(height * scale)}")
        width, height = width * scale, height * scale
        grow = max(1.0, min_side / min(width, height))
        width, height = width * grow, height * grow
        return _multiple(width, multiple), _multiple(height, multiple)

    def _fps(self, task: str, default: int, part: str) -> int:
        video = self.brief.video
        fps = video.fps if video and video.fps else default
        high = int(self.bound(task, "fps", "maximum") or 60)
        if fps > high:
            self.note("clamped", part, f"{fps} fps is more than {task} makes: {high} fps")
            fps = high
        return fps

    def _generated_video(self, suffix: str, seed: int | None, duration: float, song: str | None,
                         lora: str | None) -> str:
        video = self.brief.video
        assert video is not None
        models = GENERATOR_MODELS["render_video"]
        random_ = self.weights_note("video", "render_video", models)
        fps = self._fps("render_video", 8, "video")
        width, height = self._size("render_video", models, RANDOM_WEIGHTS_HEIGHT if random_ else 512, part="video")
        length = video.duration_s or duration
        frames = max(1, round(length * fps))
        max_frames = int(min([self.limit(m, "max_frames") or 1e9 for m in models]
                             + [self.bound("render_video", "num_frames", "maximum") or 1e9]))
        if frames > max_frames:
            self.note("clamped", "video", f"{frames} frames ({length:g} s at {fps} fps) is more than render_video "
                                          f"makes here: {max_frames} frames; the mux extends the video to the audio")
            frames = max_frames
        prompt = video.prompt or {"$ref": f"{song}.output.video_prompt"} if song else video.prompt or self.brief.theme
        params: dict[str, Any] = {"prompt": prompt or self.brief.prompt[:2000], "num_frames": frames, "fps": fps,
                                  "width": width, "height": height, "seed": seed}
        needs = [song] if isinstance(prompt, dict) and song else []
        if lora:
            params["lora"] = {"$ref": f"{lora}.output.lora"}
            needs.append(lora)
            if isinstance(params["prompt"], str) and self.brief.style_training and \
                    self.brief.style_training.instance_prompt and \
                    self.brief.style_training.instance_prompt not in params["prompt"]:
                params["prompt"] = f"{self.brief.style_training.instance_prompt}, {params['prompt']}"[:2000]
        return self.add(f"video{suffix}", "render_video", params, needs=needs)

    def _visualizer(self, suffix: str, seed: int | None, duration: float, song: str | None, sound: str) -> str:
        video = self.brief.video
        assert video is not None
        fps = self._fps("visualize_audio", 24, "video")
        width, height = self._size("visualize_audio", (), 720, part="video")
        params: dict[str, Any] = {"audio": {"$ref": f"{sound}.output.audio"}, "width": width, "height": height,
                                  "fps": fps, "seed": seed, "palette": video.palette}
        needs = [sound]
        if song:
            params["title"] = {"$ref": f"{song}.output.title"}
            if video.palette is None:
                params["palette"] = {"$ref": f"{song}.output.palette"}
            if video.lyrics_overlay and self.brief.vocals:
                params["lyrics"] = {"$ref": f"{song}.output.sections"}
            needs.append(song)
        elif self.brief.title:
            params["title"] = self.brief.title
        return self.add(f"video{suffix}", "visualize_audio", params, needs=needs)

    def _stills(self, suffix: str, seed: int | None, lora: str | None) -> None:
        stills = self.brief.stills
        assert stills is not None
        models = GENERATOR_MODELS["render_video"]
        random_ = self.weights_note("stills", "render_video", models)
        width, height = self._size("render_video", models, RANDOM_WEIGHTS_HEIGHT if random_ else 512, part="stills")
        for index in range(stills.count):
            params: dict[str, Any] = {"prompt": (stills.prompt or self.brief.theme or self.brief.prompt)[:2000],
                                      "num_frames": 1, "fps": 1, "width": width, "height": height,
                                      "seed": (seed or 0) + index}
            needs = []
            if lora:
                params["lora"] = {"$ref": f"{lora}.output.lora"}
                needs.append(lora)
            self.add(f"still{suffix}-{index + 1}", "render_video", params, needs=needs)

    def _assemble(self, suffix: str, bed: str | None, voices: list[tuple[str, Any]], video: str | None,
                  song: str | None) -> None:
        """Beds and voices are mixed (the bed ducks under each voice), then put under the video."""
        audio = bed
        for index, (voice, start) in enumerate(voices):
            if audio is None:
                audio = voice
                continue
            node = f"mix{suffix}" if index == len(voices) - 1 or len(voices) == 1 else f"mix{suffix}-{index + 1}"
            params: dict[str, Any] = {"bed": {"$ref": f"{audio}.output.audio"},
                                      "voice": {"$ref": f"{voice}.output.audio"}}
            if isinstance(start, float | int) and start:
                params["voice_start_s"] = float(start)
            elif isinstance(start, dict) and song:
                params["voice_start_s"] = {"$ref": f"{song}.output.vocals_start_s"}
            audio = self.add(node, "mix_audio", params, needs=[audio, voice] + ([song] if isinstance(start, dict)
                                                                               and song else []))
        if video is None:
            return
        if audio is None:
            return  # a video on its own is the deliverable
        params = {"audio": {"$ref": f"{audio}.output.audio"}, "video": {"$ref": f"{video}.output.video"},
                  "fit_video": "extend" if self._generated(video) else "cut"}
        needs = [audio, video]
        if self._task(video) == "visualize_audio" and self.brief.vocals and song:
            params["subtitles"] = {"$ref": f"{video}.output.subtitles"}
        self.add(f"final{suffix}", "mux_media", params, needs=needs)

    def _task(self, node_id: str) -> str:
        return next(n["task"] for n in self.nodes if n["id"] == node_id)

    def _generated(self, node_id: str) -> bool:
        return self._task(node_id) == "render_video"


class Unplannable(ValueError):
    """Every part the brief asks for is impossible here (the notes say why): no job to make."""

    def __init__(self, brief: Brief, notes: list[dict[str, Any]]) -> None:
        super().__init__("nothing in this request can be made: "
                         + "; ".join(n["message"] for n in notes if n["kind"] == "impossible"))
        self.brief = brief
        self.notes = notes


class MissingTask(LookupError):
    def __init__(self, task: str) -> None:
        super().__init__(f"the catalog has no task {task!r}")
        self.task = task


def write_narration(brief: Brief) -> str:
    """A short spoken text for the theme when the user gave none (an intro line, not filler)."""
    theme = pick_theme(f"{brief.theme or ''} {brief.prompt}")
    subject = (brief.theme or "").strip().rstrip(".") or theme.name
    title = brief.title or theme.titles[0]
    return f"{title}. A moment about {subject}. Close your eyes, and listen."[:2000]


def _multiple(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _part_of(node_id: str) -> str | None:
    base = node_id.split("-", 1)[0]
    return {"music": "music", "vocals": "vocals", "narration": "narration", "voice": "voice_training",
            "lora": "style_training", "video": "video", "still": "stills"}.get(base)


__all__ = ["Capabilities", "Composer", "Composition", "MissingTask", "Unplannable", "write_narration"]
