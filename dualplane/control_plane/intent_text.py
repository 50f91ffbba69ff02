"""Free text → a :class:`Brief`, by rules (the planner's path without a chat model).

Reading is done on whole words, with negation scopes ("no vocals", "without drums or bass"),
quoted passages taken out first (lyrics and scripts are the user's words, not instructions),
and numbers in the forms people write ("90s", "1.5 minutes", "a minute and a half", "1:30",
"30-second"). Everything the text asks for that the brief cannot hold becomes a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dualplane.common.models.brief import Brief
from dualplane.tasks.lyrics import THEMES
from dualplane.tasks.song import GENRES

#: Longest piece the planner composes; longer requests are clamped with a note.
MAX_PIECE_S = 600.0
#: Frame heights a brief may ask for (the brief schema's bounds).
MIN_HEIGHT, MAX_HEIGHT = 64, 2160

# -- vocabularies (lower case, whole words or phrases) -------------------------------------------

MUSIC_WORDS = {"track", "tracks", "beat", "beats", "song", "songs", "tune", "tunes", "music", "musical", "piece",
               "instrumental", "instrumentals", "soundtrack", "score", "melody", "jingle", "loop", "bgm", "anthem",
               "ballad", "lullaby", "banger", "composition", "bed", "backing", "arrangement", "groove", "jam",
               "theme song", "background music", "music bed", "musicgen", "symphony", "sonata", "waltz", "riff",
               "playlist", "album", "single", "ep", "mixtape", "remix", "medley", "etude", "étude", "nocturne",
               "prelude", "concerto", "serenade", "ditty", "number", "instrumental piece", "bossa nova", "flamenco",
               "beat tape", "sountrack", "musc", "msuic"}
SONG_WORDS = {"song", "songs", "ballad", "anthem", "single"}
VOCAL_WORDS = {"lyrics", "lyric", "sing", "sings", "singing", "sung", "singer", "vocal", "vocals", "vocalist",
               "rap", "raps", "rapping", "rapper", "chorus", "verse", "verses", "karaoke", "choruses"}
NARRATION_WORDS = {"narrate", "narrated", "narrating", "narration", "narrator", "voice-over", "voiceover",
                   "voice over", "read", "reads", "reading", "read aloud", "say", "says", "saying", "speak",
                   "speaks", "speaking", "spoken", "speech", "audiobook", "podcast intro", "announcement", "announce",
                   "announcer", "recite", "recites", "reciting", "monologue", "tts", "text to speech",
                   "spoken intro", "voice intro", "tell", "tells", "poem", "story", "greeting", "message",
                   "talk", "talks", "talking", "dialogue", "commentary", "welcome", "just voice", "voice only",
                   "bedtime story", "read out", "voice message", "intro voice", "spoken word"}
VOICE_TRAINING_PHRASES = {"my voice", "my own voice", "clone", "cloned", "cloning", "clone my voice",
                          "train a voice", "train my voice", "voice model", "voice clone", "sounds like me",
                          "in my voice", "trained voice", "voice clips", "voice samples", "my recordings",
                          "recordings of me", "her voice", "his voice", "their voice", "train the voice",
                          "custom voice", "train voice"}
STYLE_TRAINING_PHRASES = {"lora", "loras", "my photos", "my photo", "my pictures", "my images", "my drawings",
                          "my art", "my artwork", "my paintings", "my art style", "my style", "my selfies",
                          "my face", "dreambooth", "fine-tune", "fine tune", "finetune", "train a style",
                          "train a lora", "my sketches", "my illustrations", "of me"}
VIDEO_WORDS = {"video", "videos", "music video", "visuals", "visual", "visualizer", "visualiser", "visualization",
               "visualisation", "animation", "animations", "animated", "animate", "lyric video", "video clip",
               "footage", "instagram reel", "reels", "clip of", "clip showing", "short clip", "tiktok", "youtube short", "shorts", "movie", "mv", "render",
               "clip for", "short film", "cinemagraph", "gif"}
STILLS_WORDS = {"image", "images", "picture", "pictures", "cover art", "cover", "poster", "posters", "still",
                "stills", "thumbnail", "thumbnails", "artwork", "artworks", "wallpaper", "wallpapers", "illustration",
                "illustrations", "album art", "portrait of", "paintings", "oil painting", "oil-painting",
                "album cover", "photo", "photos", "drawing", "portrait", "painting"}
VISUALIZER_WORDS = {"visualizer", "visualiser", "audio-reactive", "audio reactive", "spectrum", "waveform",
                    "lyric video", "visualization", "visualisation", "equalizer", "particles"}
GENERATED_VIDEO_WORDS = {"animatediff", "generated video", "ai video", "of me", "scene", "scenes", "showing",
                         "footage", "cinematic shot", "text-to-video"}
A_CAPPELLA = {"a cappella", "acapella", "a capella", "no music", "without music", "voice only",
              "just my voice", "just the voice", "just vocals", "only vocals", "no backing", "no instruments",
              "without instruments", "unaccompanied", "no background music", "without background music"}
INSTRUMENTAL_WORDS = {"instrumental", "instrumentals", "no vocals", "without vocals", "no lyrics", "without lyrics",
                      "no singing", "without singing", "no words", "melody-only", "melody only"}
INSTRUMENTS = ("acoustic guitar", "electric guitar", "bass guitar", "upright bass", "double bass", "synth bass",
               "grand piano", "electric piano", "rhodes", "piano", "guitar", "bass", "drums", "drum", "percussion",
               "string quartet", "strings", "string", "violin", "violins", "viola", "cello", "flute", "saxophone", "sax", "trumpet", "trombone",
               "brass", "horns", "horn", "synth", "synths", "synthesizer", "organ", "harp", "choir", "ukulele",
               "banjo", "marimba", "xylophone", "vibraphone", "bells", "pads", "808", "808s", "hi-hats", "hihats",
               "harmonica", "accordion", "clarinet", "oboe", "bassoon", "timpani", "tabla", "sitar", "koto",
               "mandolin", "steel drums", "kalimba", "celesta", "glockenspiel", "kick", "snare", "claps")
MOOD_WORDS = {"rainy", "night", "sunny", "melancholic", "melancholy", "happy", "joyful", "dreamy", "dark",
              "nostalgic", "calm", "upbeat", "romantic", "lonely", "energetic", "peaceful", "sad", "hopeful",
              "mysterious", "epic", "chill", "relaxing", "relaxed", "cozy", "cosy", "moody", "uplifting",
              "angry", "aggressive", "gentle", "soft", "warm", "cold", "eerie", "spooky", "playful", "triumphant",
              "bittersweet", "serene", "tense", "haunting", "groovy", "funky", "emotional", "heroic", "whimsical",
              "festive", "somber", "sombre", "ethereal", "intense", "mellow", "bright", "cheerful", "sleepy"}
#: Genre words (from the song planner, plus a few that map onto its genres).
GENRE_WORDS: dict[str, str] = {kw: genre for keywords, genre, *_ in GENRES for kw in keywords}
GENRE_WORDS.update({"bossa nova": "bossa nova", "flamenco": "flamenco", "country": "country", "indie": "indie",
                    "house": "house", "deep house": "deep house", "trap": "trap", "punk": "punk rock",
                    "punk rock": "punk rock", "lounge": "lounge", "salsa": "salsa", "samba": "samba", "tango": "tango",
                    "afrobeat": "afrobeat", "afrobeats": "afrobeats", "reggaeton": "reggaeton", "latin": "latin",
                    "jazzy": "jazz", "bluesy": "blues", "grime": "grime", "drill": "drill", "gospel": "gospel",
                    "metal": "metal", "heavy metal": "heavy metal", "grunge": "grunge", "shoegaze": "shoegaze",
                    "emo": "emo", "bluegrass": "bluegrass", "celtic": "celtic", "opera": "opera",
                    "baroque": "baroque", "minimalist": "minimalist", "chiptune": "chiptune", "8-bit": "chiptune",
                    "dubstep": "dubstep", "trance": "trance", "garage": "garage", "new age": "new age",
                    "world": "world", "k-pop": "k-pop", "j-pop": "j-pop", "city pop": "city pop",
                    "swing": "swing", "bebop": "bebop", "big band": "big band", "motown": "soul", "ska": "ska",
                    "dub": "dub", "industrial": "industrial", "hyperpop": "hyperpop", "phonk": "phonk",
                    "cumbia": "cumbia", "bachata": "bachata", "polka": "polka", "disco": "disco", "funk": "funk",
                    "lo-fi": "lo-fi hip hop", "lofi": "lo-fi hip hop", "chillhop": "lo-fi hip hop",
                    "synthwave": "synthwave", "hip hop": "hip hop", "hip-hop": "hip hop", "rnb": "r&b",
                    "r&b": "r&b", "techno": "techno", "ambient": "ambient", "jazz": "jazz", "rock": "rock",
                    "folk": "folk", "classical": "classical", "blues": "blues", "reggae": "reggae", "soul": "soul",
                    "edm": "edm", "trip hop": "trip hop", "trip-hop": "trip hop", "downtempo": "downtempo",
                    "orchestral": "orchestral", "cinematic": "cinematic", "epic orchestral": "epic orchestral",
"pop": "pop", "electronic": "electronic", "electronica": "electronica",
                    "lo-fi hip hop": "lo-fi hip hop", "chillwave": "chillwave", "vaporwave": "vaporwave",
                    "drum and bass": "drum and bass", "dnb": "drum and bass", "kpop": "k-pop", "r and b": "soul", "lofi hip hop":
                    "lo-fi hip hop", "hiphop": "hip hop", "boom-bap": "hip hop"})
#: Genre words that also name an instrument: a genre only when nothing more specific is found.
_WEAK_GENRES = {"piano", "guitar", "sax"}
LANGUAGES = {"english": "en", "spanish": "es", "french": "fr", "german": "de", "italian": "it", "portuguese": "pt",
             "japanese": "ja", "korean": "ko", "chinese": "zh", "mandarin": "zh", "cantonese": "zh", "hindi": "hi",
             "russian": "ru", "dutch": "nl", "swedish": "sv", "polish": "pl", "turkish": "tr", "arabic": "ar",
             "greek": "el", "finnish": "fi", "norwegian": "no", "danish": "da", "czech": "cs", "ukrainian": "uk",
             "vietnamese": "vi", "thai": "th", "indonesian": "id", "hebrew": "he", "latin": "la", "catalan": "ca"}
_NATIVE_LANGUAGE = re.compile(r"\b(en espa[nñ]ol|auf deutsch|en fran[cç]ais|in italiano|em portugu[eê]s|"
                              r"in het nederlands|po russki|на русском|日本語|한국어|中文)\b", re.IGNORECASE)
_NATIVE_CODES = {"espa": "es", "deutsch": "de", "fran": "fr", "italiano": "it", "portug": "pt", "nederlands": "nl",
                 "russki": "ru", "русском": "ru", "日本語": "ja", "한국어": "ko", "中文": "zh"}
#: Stop words that give away the language of a passage (a few per language suffice for lyrics).
_STOPWORDS = {
    "en": {"the", "and", "you", "is", "of", "in", "my", "to", "i", "it", "we", "on", "your", "all"},
    "es": {"el", "la", "los", "las", "y", "que", "de", "en", "mi", "tu", "es", "un", "una", "corazón", "noche",
           "por", "con", "amor", "yo"},
    "fr": {"le", "la", "les", "et", "je", "tu", "de", "est", "un", "une", "dans", "mon", "nous", "pas", "mais",
           "toi", "moi", "amour", "nuit"},
    "de": {"der", "die", "das", "und", "ich", "du", "ist", "nicht", "ein", "eine", "mein", "wir", "mit", "auf",
           "liebe", "nacht", "dich", "mich"},
    "it": {"il", "la", "e", "che", "di", "un", "una", "sono", "mio", "tu", "io", "non", "per", "amore", "notte",
           "ti", "mi"},
    "pt": {"o", "a", "os", "as", "e", "que", "de", "um", "uma", "meu", "você", "eu", "não", "amor", "noite",
           "com", "em"},
}
_NEGATORS = {"no", "not", "without", "minus", "skip", "exclude", "excluding", "never", "zero", "dont", "don't",
             "nothing", "none", "avoid", "lose", "drop", "w/o", "sans"}
_SCOPE_BREAKERS = {"but", "with", "and", "then", "plus", "also", "just", "only", "instead"}
_WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
                 "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
                 "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
                 "couple": 2, "a couple of": 2, "a few": 3, "several": 3, "half": 0.5}
_UNIT = r"(?P<unit>seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)"
_LONG_UNIT = r"(?P<unit>seconds?|secs?|minutes?|mins?|hours?|hrs?)"
_NUMBER_WORD = "|".join(sorted((w for w in _WORD_NUMBERS if w != "half"), key=len, reverse=True))
#: "30s", "1.5 minutes", "1,5 min", "30-second" (digits: the unit may touch the number)
_DURATION = re.compile(
    r"(?<![\w.:,])(?P<num>\d+(?:[.,]\d{1,2})?)(?P<half>\s+and\s+a\s+half)?\s*(?:-\s*)?" + _UNIT
    + r"(?P<half2>\s+and\s+a\s+half)?(?![\w'])", re.IGNORECASE)
#: "two minutes", "a minute and a half", "one and a half minutes", "a couple of minutes" (words: a space first)
_WORD_DURATION = re.compile(
    r"(?<![\w])(?P<num>(?:" + _NUMBER_WORD + r")(?:[\s-](?:" + _NUMBER_WORD + r"))?)"
    r"(?P<half>\s+and\s+a\s+half)?[\s-]+" + _LONG_UNIT + r"(?P<half2>\s+and\s+a\s+half)?(?![\w'])",
    re.IGNORECASE)
#: Words before a number that make it a time of day or a deadline, not a length ("closes in 15 minutes").
_NOT_A_LENGTH_BEFORE = {"in", "within", "after", "every", "before", "by", "ago", "until", "till", "at"}
_HALF_UNIT = re.compile(r"\b(?P<part>half|a quarter|quarter|three quarters|three-quarters)\s+(?:of\s+)?(?:a|an)\s+"
                        r"(?P<unit>minute|hour)\b", re.IGNORECASE)
_FRACTIONS = {"half": 0.5, "a quarter": 0.25, "quarter": 0.25, "three quarters": 0.75, "three-quarters": 0.75}
_COMPOUND = re.compile(r"(?<![\w.])(?P<m>\d{1,2})\s*m(?:in)?\s*(?P<s>\d{1,2})\s*s(?:ec)?\b", re.IGNORECASE)
_ASPECT_PAIRS = {(16, 9), (9, 16), (21, 9), (4, 3), (3, 4), (1, 1), (4, 5), (5, 4), (3, 2), (2, 3), (16, 10)}
_CLOCK = re.compile(r"(?<![\d:])(?P<m>\d{1,2}):(?P<s>[0-5]\d)(?![\d:])(?!\s*(?:am|pm|a\.m|p\.m))", re.IGNORECASE)
_DECADE_AFTER = {"music", "style", "hip", "hip-hop", "hiphop", "rock", "pop", "vibe", "vibes", "r&b", "house",
                 "era", "nostalgia", "sound", "sounds", "synth", "synthwave", "disco", "funk", "kid", "kids",
                 "grunge", "boy", "rap", "dance", "aesthetic", "retro", "jazz", "soul", "techno", "punk", "metal",
                 "inspired", "throwback", "classic", "classics", "anime", "cartoon", "movie", "movies", "tv"}
_DECADE_BEFORE = {"the", "early", "late", "mid", "from", "of", "'", "classic", "like"}
_BPM = re.compile(r"(?P<bpm>\d{2,3})\s*(?:-\s*)?(?:bpm|beats per minute|beats a minute)\b", re.IGNORECASE)
_FPS = re.compile(r"(?P<fps>\d{1,3})\s*(?:-\s*)?(?:fps|frames per second|frames a second|frame/s)\b", re.IGNORECASE)
_FPS_ALT = re.compile(r"\bframe ?rate (?:of )?(?P<fps>\d{1,3})\b", re.IGNORECASE)
_HEIGHT = re.compile(r"\b(?P<h>480|540|576|720|1080|1440|2160)\s*p\b", re.IGNORECASE)
_SIZE = re.compile(r"\b(?P<w>\d{3,4})\s*[x×]\s*(?P<h>\d{3,4})\b")
_RATIO = re.compile(r"(?<![\d:])(?P<a>\d{1,2})\s*:\s*(?P<b>\d{1,2})(?![\d:])")
_KEY = re.compile(r"\b(?:in(?: the key of)?|key of|key:?)\s+(?P<tonic>[A-Ga-g])(?P<acc>[\s-]*(?:#|♯|sharp|b|♭|flat))?"
                  r"(?:\s*(?P<mode>major|minor|maj|min|m))?\b(?!')")
_SEED = re.compile(r"\bseed\s*(?:[:=#]|of|number)?\s*(?P<seed>\d{1,10})\b", re.IGNORECASE)
_VARIATIONS = re.compile(r"\b(?P<n>\d|two|three|four|five|six|seven|eight|a couple of|a few|several)\s+"
                         r"(?:different\s+)?(?:versions|variations|variants|takes|options|alternatives|"
                         r"renditions|drafts)\b", re.IGNORECASE)
_COUNT_STILLS = re.compile(r"\b(?P<n>\d|two|three|four|five|six|seven|eight|a couple of|a few)\s+(?:\w+\s+){0,2}"
                           r"(?:images|pictures|stills|posters|thumbnails|artworks|illustrations|wallpapers|"
                           r"photos|covers|paintings|drawings)\b", re.IGNORECASE)
_QUOTED = re.compile(r"\"(?P<a>[^\"]{2,})\"|“(?P<b>[^”]{2,})”|«(?P<c>[^»]{2,})»|(?<![A-Za-z])'(?P<d>[^']{8,})'(?![A-Za-z])",
                     re.DOTALL)
_LYRICS_COLON = re.compile(r"\b(?P<what>lyrics?|voice-?over|narration|script|text|say|words)\s*[:=]\s*(?P<text>.+)$",
                           re.IGNORECASE | re.DOTALL)
_STYLE_OF = re.compile(r"\b(?:in the style of|in the vein of|inspired by|style of|sounds? like|a la|à la)\s+"
                       r"(?P<what>[\w' .&-]{2,60}?)(?=$|[,.;!?]| with | and | for | about | that | in | at )",
                       re.IGNORECASE)
_TITLE = re.compile(r"\b(?:called|titled|named|entitled)\s+(?:\"(?P<q>[^\"]{1,120})\"|(?P<w>[\w' -]{1,60}?))"
                    r"(?=$|[,.;!?]| with | and | about | in | for )", re.IGNORECASE)
_ABOUT = re.compile(r"\b(?:about|of|on|for|celebrating|describing|featuring|showing)\s+(?P<what>[^,.;!?]{3,160})",
                    re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9][a-z0-9'&+#]*", re.IGNORECASE)
_LYRIC_CUES = ("lyrics", "lyric", "sing", "sings", "singing", "sung", "chorus", "verse", "goes", "words", "rap",
               "hook", "refrain")
_SCRIPT_CUES = ("say", "says", "saying", "narrate", "narrating", "read", "reads", "reading", "voice-over",
                "voiceover", "speak", "speaks", "speaking", "script", "line", "announce", "announcing", "text",
                "recite", "tell", "intro", "message", "greeting", "welcome")
_STOP = {"a", "an", "the", "with", "and", "of", "for", "to", "in", "on", "at", "me", "my", "some", "please", "make",
         "create", "generate", "give", "i", "want", "need", "would", "like", "could", "you", "can", "it", "that",
         "this", "is", "be", "from", "by", "over", "under", "then", "plus", "also", "just", "only", "into", "as",
         "about", "s", "sec", "second", "seconds", "minute", "minutes", "min", "mins", "long", "short", "its",
         "using", "use", "set", "put", "add", "let", "lets", "let's", "get", "do", "it's", "im", "i'm", "our",
         "your", "their", "his", "her", "we", "us", "them", "new", "quick", "little", "nice", "good", "cool",
         "one", "two", "three", "four", "five", "ten", "twenty", "thirty", "sixty", "ninety", "half", "or", "any", "very", "really", "kind", "sort", "type", "style", "vibe", "vibes", "feel", "mood",
         "train", "trained", "training", "voice", "clips", "clip", "lora", "version", "versions", "hd", "4k",
         "vertical", "square", "horizontal", "widescreen", "landscape", "portrait", "fps", "bpm", "key", "major",
         "minor", "seed", "render", "rendered", "sung", "spoken", "out", "up", "there", "here", "what", "which"}


@dataclass
class _Text:
    """The request with its quoted passages taken out, as tokens with their negation flags."""

    original: str
    rest: str
    lower: str
    quotes: list[tuple[int, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    negated: list[bool] = field(default_factory=list)

    def has(self, phrases: set[str] | tuple[str, ...] | str, *, negated: bool = False) -> bool:
        return any(self.find(p, negated=negated) for p in ([phrases] if isinstance(phrases, str) else phrases))

    def find(self, phrase: str, *, negated: bool = False) -> list[int]:
        """Token positions where ``phrase`` starts, as whole words, (not) inside a negation scope."""
        words = [w for w in re.split(r"[\s-]+", phrase) if w]
        n = len(words)
        hits = []
        for i in range(len(self.tokens) - n + 1):
            if self.tokens[i:i + n] == words and any(self.negated[i:i + n]) == negated:
                hits.append(i)
        return hits


def read_text(text: str) -> _Text:
    quotes: list[tuple[int, str]] = []

    def cut(match: re.Match[str]) -> str:
        body = next(g for g in match.groups() if g is not None)
        quotes.append((match.start(), body.strip()))
        return " QUOTED "

    rest = _QUOTED.sub(cut, text)
    colon = _LYRICS_COLON.search(rest)
    if colon and not quotes:
        quotes.append((colon.start("text"), colon.group("text").strip()))
        rest = rest[:colon.start("text")] + " QUOTED "
        if not colon.group("what").lower().startswith("lyric"):
            # the colon's word tells what the passage is, like a cue before a quote
            quotes[-1] = (colon.start("text"), colon.group("text").strip())
    lower = rest.lower().replace("’", "'")
    tokens = [t.strip("'-").lower() for t in _TOKEN.findall(lower)]
    tokens = [t for t in tokens if t]
    return _Text(original=text, rest=rest, lower=lower, quotes=quotes, tokens=tokens,
                 negated=_negation_scopes(lower, tokens))


def _negation_scopes(lower: str, tokens: list[str]) -> list[bool]:
    """Each token's flag: inside "no X", "without X or Y", "don't sing"... (up to four words, until a
    break word or punctuation)."""
    flags = [False] * len(tokens)
    # punctuation ends a scope: find where each token sits relative to , . ; ! ?
    stops = _punctuation_breaks(lower, tokens)
    i = 0
    while i < len(tokens):
        word = tokens[i]
        pair = " ".join(tokens[i:i + 2])
        negator = word in _NEGATORS or (word == "do" and i + 1 < len(tokens) and tokens[i + 1] == "not") or \
            pair in ("leave out", "leaving out", "get rid")
        if word in ("lose", "drop", "skip") and not (i + 1 < len(tokens) and tokens[i + 1] in ("the", "any")):
            negator = negator and i + 1 < len(tokens) and tokens[i + 1] in VOCAL_WORDS | {"vocals", "drums", "video"}
        if negator:
            j = i + (2 if word == "do" or pair in ("leave out", "leaving out", "get rid") else 1)
            taken = 0
            while j < len(tokens) and taken < 4 and not stops[j]:
                # "no drums and no bass" re-opens its own scope; "without drums and bass" keeps going
                if tokens[j] in _SCOPE_BREAKERS and taken and (
                        tokens[j] != "and" or not _instrument_follows(tokens, j + 1)):
                    break
                flags[j] = True
                taken += tokens[j] not in ("the", "a", "an", "any", "and", "or")  # words that carry the list on
                j += 1
            i = j
            continue
        i += 1
    return flags


def _instrument_follows(tokens: list[str], at: int) -> bool:
    """"... and bass", "... and the bass": the scope goes on over a list of instruments."""
    if at < len(tokens) and tokens[at] in ("the", "a", "any"):
        at += 1
    return at < len(tokens) and tokens[at] in INSTRUMENTS


def _punctuation_breaks(lower: str, tokens: list[str]) -> list[bool]:
    """True for a token that follows punctuation (a negation scope never crosses it)."""
    breaks = []
    pos = 0
    for token in tokens:
        at = lower.find(token, pos)
        if at < 0:
            breaks.append(False)
            continue
        between = lower[pos:at]
        breaks.append(any(c in between for c in ",.;!?:()—–") or " - " in between)
        pos = at + len(token)
    return breaks


# -- numbers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    seconds: float
    start: int
    end: int


def _number(text: str) -> float | None:
    text = text.lower().strip()
    if text in _WORD_NUMBERS:
        return float(_WORD_NUMBERS[text])
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.split(r"[\s-]+", text)
    if len(parts) == 2 and parts[0] in ("a", "an"):
        parts = parts[1:]  # "a two-minute briefing"
    if len(parts) == 1 and parts[0] in _WORD_NUMBERS:
        return float(_WORD_NUMBERS[parts[0]])
    if len(parts) == 2 and all(p in _WORD_NUMBERS for p in parts) and _WORD_NUMBERS[parts[0]] in range(20, 100, 10) \
            and 1 <= _WORD_NUMBERS[parts[1]] <= 9:
        return float(_WORD_NUMBERS[parts[0]] + _WORD_NUMBERS[parts[1]])  # "twenty five"
    return None


def find_durations(lower: str) -> list[Duration]:
    """Every length the text names, in seconds, with where it is (for what it applies to)."""
    found: list[Duration] = [Duration(int(m.group("m")) * 60 + int(m.group("s")), m.start(), m.end())
                             for m in _COMPOUND.finditer(lower)]
    for match in _HALF_UNIT.finditer(lower):
        share = _FRACTIONS[match.group("part").lower()]
        found.append(Duration(share * (3600.0 if match.group("unit").lower() == "hour" else 60.0), match.start(),
                              match.end()))
    for pattern in (_DURATION, _WORD_DURATION):
        for match in pattern.finditer(lower):
            if any(d.start <= match.start() < d.end or match.start() <= d.start < match.end() for d in found):
                continue  # "a minute" inside "half a minute"
            value = _number(match.group("num").replace(",", "."))
            if value is None:
                continue
            unit = match.group("unit").lower()
            if unit == "s" and _is_decade(lower, match):
                continue
            if unit == "m" and _looks_like_metres(lower, match):
                continue
            before = lower[:match.start()].split()
            if before and before[-1] in _NOT_A_LENGTH_BEFORE and not re.match(r"\s*(?:-\s*)?long\b",
                                                                              lower[match.end():]):
                continue
            if match.group("half") or match.group("half2"):
                value += 0.5
            scale = 3600 if unit.startswith("h") else 60 if unit.startswith("m") else 1
            found.append(Duration(value * scale, match.start(), match.end()))
    for match in _CLOCK.finditer(lower):
        if (int(match.group("m")), int(match.group("s"))) in _ASPECT_PAIRS:
            continue  # 9:16 is a frame shape
        found.append(Duration(int(match.group("m")) * 60 + int(match.group("s")), match.start(), match.end()))
    # "0 seconds", "0:00" name no length a piece can have
    return [d for d in _join_compound(sorted(found, key=lambda d: d.start), lower) if d.seconds > 0]


def _join_compound(found: list[Duration], lower: str) -> list[Duration]:
    """"2m30s", "1 minute 30 seconds", "1 min and 20 sec": one length."""
    joined: list[Duration] = []
    for d in found:
        if joined:
            last = joined[-1]
            between = lower[last.end:d.start]
            if re.fullmatch(r"\s*(?:and|,)?\s*", between) and last.seconds >= 60 and d.seconds < 60:
                joined[-1] = Duration(last.seconds + d.seconds, last.start, d.end)
                continue
        joined.append(d)
    return joined


def _is_decade(lower: str, match: re.Match[str]) -> bool:
    """"90s hip hop", "the 80s": a decade, not ninety seconds."""
    digits = match.group("num")
    if not digits.isdigit() or int(digits) % 10 or match.group("unit") != "s":
        return False
    after = lower[match.end():].split()
    before = lower[:match.start()].split()
    if after and after[0].strip(",.;!?") in _DECADE_AFTER:
        return True
    if before and before[-1].strip(",.;!?'") in _DECADE_BEFORE:
        return True
    return int(digits) in (20, 30, 40, 50, 60, 70, 80, 90) and lower[match.start() - 1:match.start()] == "'"


def _looks_like_metres(lower: str, match: re.Match[str]) -> bool:
    return bool(re.match(r"\s*(?:tall|high|long|wide|deep|away)\b", lower[match.end():]))


# -- the reader -----------------------------------------------------------------------------------


def brief_from_text(prompt: str, *, images: list[str] | None = None, voice_clips: list[str] | None = None,
                    lyrics: str | None = None, duration_s: float | None = None, style: str | None = None,
                    mode: str | None = None, goal: str | None = None) -> Brief:
    """The brief of a request: its words plus what a form sent alongside (uploads, lyrics...)."""
    text = read_text(prompt)
    notes: list[dict[str, Any]] = []
    images, voice_clips = list(images or []), list(voice_clips or [])
    style_text = (style or "").lower()
    lowered_all = f"{text.lower} {style_text}"

    wants = _parts(text, images=images, voice_clips=voice_clips, goal=goal, mode=mode, lyrics=lyrics, style=style)
    if not any(wants.values()):
        raise NotUnderstood(prompt)

    durations = find_durations(text.lower)
    piece_s, video_s = _piece_duration(text.lower, durations)
    if duration_s is not None:
        piece_s = duration_s
    if piece_s is not None and piece_s > MAX_PIECE_S:
        notes.append({"kind": "clamped", "part": None,
                      "message": f"asked for {_fmt_s(piece_s)}; the longest piece planned is {_fmt_s(MAX_PIECE_S)}"})
        piece_s = MAX_PIECE_S
    if video_s is not None and video_s > MAX_PIECE_S:
        video_s = MAX_PIECE_S

    quotes = _assign_quotes(text, wants, lyrics)
    language = _language(lowered_all, quotes)
    brief: dict[str, Any] = {"prompt": prompt, "theme": _theme(text), "title": _title(prompt),
                             "duration_s": piece_s, "seed": _seed(text.lower),
                             "variations": _count(_VARIATIONS, text.lower) or 1, "notes": notes}
    if wants["music"]:
        brief["music"] = _music(text, style_text, notes)
    if wants["vocals"]:
        brief["vocals"] = _vocals(text, quotes, language, voiced=wants["voice_training"])
    if wants["narration"]:
        brief["narration"] = _narration(text, quotes, language, voiced=wants["voice_training"])
    if wants["voice_training"]:
        brief["voice_training"] = {"clips": voice_clips}
    if wants["style_training"]:
        brief["style_training"] = {"images": images,
                                   "instance_prompt": "sks person" if _about_me(text) else "sks style"}
    if wants["video"]:
        brief["video"] = _video(text, video_s, brief["theme"])
        height = brief["video"]["height"]
        if height is not None and not MIN_HEIGHT <= height <= MAX_HEIGHT:
            brief["video"]["height"] = min(MAX_HEIGHT, max(MIN_HEIGHT, height))
            notes.append({"kind": "clamped", "part": "video", "message": f"a frame height of {height} px is "
                          f"outside {MIN_HEIGHT}–{MAX_HEIGHT}: {brief['video']['height']} px"})
        if wants["style_training"]:
            brief["video"]["kind"] = "generated"  # a trained style is used by the video generator only
    if not wants["music"]:
        for what, found in (("a key", _key(text.rest)), ("a tempo", _tempo(text))):
            if found:
                notes.append({"kind": "ignored", "part": None,
                              "message": f"{what} ({found}) was given but there is no music in this request"})
    if wants["stills"]:
        brief["stills"] = {"count": _count(_COUNT_STILLS, text.lower) or 1, "prompt": brief["theme"]}
    for match in _STYLE_OF.finditer(text.rest):
        what = match.group("what").strip()
        if re.match(r"(?:my|our|these|this|the same|his|her|their)\b", what, re.IGNORECASE):
            continue  # the user's own images: a trained style, not a style word
        if not _known_style(what):
            notes.append({"kind": "ignored", "part": "music" if wants["music"] else None,
                          "message": f"'{what}': not a style the planner knows (and no imitation of a "
                                     f"named artist); planned from the other words"})
    return Brief.model_validate(brief)


class NotUnderstood(ValueError):
    """The text asks for nothing the planner can make."""

    def __init__(self, prompt: str) -> None:
        super().__init__("could not find anything to make in this request: ask for music, a song, a voice-over, "
                         "a video or images (e.g. 'a 30-second lo-fi track with a rainy-night video')")
        self.prompt = prompt


def _parts(text: _Text, *, images: list[str], voice_clips: list[str], goal: str | None, mode: str | None,
           lyrics: str | None, style: str | None) -> dict[str, bool]:
    has = text.has
    no_music = has(A_CAPPELLA) or has({"music", "beat", "backing", "instruments", "background music"}, negated=True)
    negated_words = has({"vocals", "words", "vocal", "singer", "rap"}, negated=True) or (
        has("lyrics", negated=True) and not has({"lyrics on screen", "lyrics on the screen", "lyrics overlay",
                                                 "on screen lyrics", "lyrics in the video"}, negated=True))
    negated_singing = has({"sing", "singing", "sung", "sings"}, negated=True)
    # "don't sing it, speak the lyrics": still words over the music, only not sung
    spoken_instead = negated_singing and has({"lyrics", "words", "speak", "spoken", "rap"})
    instrumental = has(INSTRUMENTAL_WORDS) or negated_words or (negated_singing and not spoken_instead) \
        or mode == "melody-only"
    genre = any(text.find(g) for g in GENRE_WORDS if g not in _WEAK_GENRES) or _styled(style)
    instrument = any(text.find(i) for i in INSTRUMENTS)
    music = (has(MUSIC_WORDS) or genre or instrument) and not no_music
    vocal_words = has(VOCAL_WORDS) and not instrumental
    song = has(SONG_WORDS) and not instrumental
    narration = has(NARRATION_WORDS) and not _narration_is_subject(text)
    given_to_read = bool(lyrics) and narration and not (vocal_words or song)
    vocals = (vocal_words or song or spoken_instead or mode == "lyrics-first" or (bool(lyrics) and not given_to_read)) \
        and not instrumental
    voice_training = bool(voice_clips) or has(VOICE_TRAINING_PHRASES)
    style_training = bool(images) or has(STYLE_TRAINING_PHRASES - {"of me"}) or (
        has("of me") and has(VIDEO_WORDS | STILLS_WORDS) and has({"train", "lora", "photos", "pictures", "selfies"}))
    video = has(VIDEO_WORDS) and not has({"video", "videos", "visuals"}, negated=True)
    stills = _asks_for_stills(text)
    if style_training and not (video or stills):
        video = True  # a trained style is for rendering: a video unless images were asked for
    if vocals and not no_music:
        music = True  # lyrics are sung (or spoken) over a backing
    if goal:
        music, vocals, video, narration, voice_training, style_training = _goal_parts(
            goal, music, vocals, video, narration, voice_training, style_training)
    if mode == "melody-only":
        vocals = False
        music = True
    if vocals and narration and not has(NARRATION_WORDS - {"poem", "story", "message", "read", "reading", "speak",
                                                             "speaks", "speaking", "spoken", "say", "says"}):
        narration = False  # "read my poem" in a song is its lyrics
    return {"music": music, "vocals": vocals, "narration": narration, "voice_training": voice_training,
            "style_training": style_training, "video": video, "stills": stills}


def _asks_for_stills(text: _Text) -> bool:
    """Images to make, not the user's own ("my photos", "these pictures" are inputs)."""
    for word in STILLS_WORDS - {"photo", "photos", "drawing", "painting", "portrait"}:
        for i in text.find(word):
            owner = text.tokens[i - 1] if i else ""
            if owner not in ("my", "these", "our", "your", "those", "his", "her", "their"):
                return True
    return False


def _styled(style: str | None) -> bool:
    """A form's style field that names a genre or a mood asks for music."""
    lower = (style or "").lower()
    return bool(lower) and (any(_phrase_in(lower, g) for g in GENRE_WORDS) or any(_phrase_in(lower, m)
                                                                                  for m in MOOD_WORDS))


def _narration_is_subject(text: _Text) -> bool:
    """"a song about a story", "lyrics that tell a story": the word names the subject, not a reading."""
    for word in ("story", "poem", "message", "tell", "tells", "talk", "welcome", "greeting", "speech"):
        for i in text.find(word):
            if i and text.tokens[i - 1] in ("a", "the", "about", "that", "which") and not any(
                    text.tokens[max(0, i - 4):i].count(w) for w in ("read", "narrate", "recite", "say")):
                return True
    return False


def _goal_parts(goal: str, music: bool, vocals: bool, video: bool, narration: bool, voice: bool,
                style: bool) -> tuple[bool, bool, bool, bool, bool, bool]:
    """The form's older ``goal`` field: the parts it always meant, plus what the words add."""
    if goal == "music":
        return True, False, video, narration, voice, style
    if goal == "song":
        return True, True, video, narration, voice, style
    if goal == "music_video":
        return True, vocals or True, True, narration, voice, style
    if goal == "lora_video":
        return music, vocals, True, narration, voice, True
    if goal == "voice_track":
        return music, vocals, video, narration or not vocals, True, style
    return music, vocals, video, narration, voice, style


def _piece_duration(lower: str, durations: list[Duration]) -> tuple[float | None, float | None]:
    """(length of the piece, length of the video when it is said separately)."""
    if not durations:
        return None, None
    video_s = None
    piece: list[float] = []
    parts_of_piece: list[float] = []
    for d in durations:
        after = lower[d.end:d.end + 40]
        target = re.match(r"\s*(?:-\s*)?(?:long\s+)?(?:of\s+)?(?:[\w-]+\s+){0,3}?(?P<noun>video|clip|animation|"
                          r"visuals?|reel|track|song|beat|piece|tune|intro|outro|voice-?over|narration|music)",
                          after)
        noun = target.group("noun") if target else ""
        if noun in ("video", "clip", "animation", "visual", "visuals", "reel"):
            video_s = d.seconds
        elif noun in ("intro", "outro"):
            parts_of_piece.append(d.seconds)  # a part of the piece, not its length (unless it is all there is)
        else:
            piece.append(d.seconds)
    if piece:
        return max(piece), video_s
    if video_s is None and parts_of_piece:
        return max(parts_of_piece), None
    return video_s, video_s


def _assign_quotes(text: _Text, wants: dict[str, bool], lyrics: str | None) -> dict[str, str]:
    """Quoted passages → lyrics or a script, by the words just before them."""
    out: dict[str, str] = {}
    if lyrics:
        out["lyrics" if wants["vocals"] or not wants["narration"] else "script"] = lyrics
    for start, body in text.quotes:
        before = text.original[max(0, start - 60):start].lower()
        cue_words = re.findall(r"[a-z-]+", before)[-6:]
        lyric = any(w in _LYRIC_CUES for w in cue_words)
        script = any(w in _SCRIPT_CUES for w in cue_words)
        if lyric and not (script and cue_words and cue_words[-1] in _SCRIPT_CUES):
            out.setdefault("lyrics", body)
        elif script:
            out.setdefault("script", body)
        elif wants["vocals"]:
            out.setdefault("lyrics", body)
        elif wants["narration"]:
            out.setdefault("script", body)
    return out


def _language(lowered: str, quotes: dict[str, str]) -> str | None:
    """The language the words should be in: named ("Spanish lyrics", "en español") or that of the given text."""
    native = _NATIVE_LANGUAGE.search(lowered)
    if native:
        phrase = native.group(1).lower()
        return next(code for stem, code in _NATIVE_CODES.items() if stem in phrase)
    for name, code in LANGUAGES.items():
        if re.search(rf"\b(?:in\s+{name}|{name}[\s-]+(?:lyrics|words|text|narration|voice-?over|version|song|"
                     rf"language|rap|vocals|ballad|poem|verse|chorus))\b", lowered):
            return code
    given = quotes.get("lyrics") or quotes.get("script")
    return detect_language(given) if given else None


def detect_language(text: str) -> str:
    words = re.findall(r"[^\W\d_]+", text.lower())
    if not words:
        return "en"
    if re.search(r"[\u3040-\u30ff]", text):
        return "ja"
    if re.search(r"[\uac00-\ud7af]", text):
        return "ko"
    if re.search(r"[\u4e00-\u9fff]", text):
        return "zh"
    if re.search(r"[\u0400-\u04ff]", text):
        return "ru"
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] > scores["en"] else "en"


def _music(text: _Text, style: str, notes: list[dict[str, Any]]) -> dict[str, Any]:
    genre = None
    for word, name in sorted(GENRE_WORDS.items(), key=lambda kv: (kv[0] in _WEAK_GENRES, -len(kv[0]))):
        if word in _WEAK_GENRES or word in ("space", "calm", "study", "film", "score", "groove", "dance", "club",
                                             "rave", "epic", "guitar", "sax", "acoustic", "campfire", "drone",
                                             "meditation", "chill", "soundtrack", "world", "number"):
            continue  # a mood or an instrument more than a genre: the song planner still hears it
        # whole words of the request (so "post-rock" has rock), or of the form's style field
        if (text.find(word) or _phrase_in(style, word)) and not text.find(word, negated=True):
            genre = name
            break
    moods = [m for m in _ordered(MOOD_WORDS, text) if not text.find(m, negated=True)][:4]
    for theme in THEMES:
        if theme.name in ("rain", "night") and any(text.find(w) for w in theme.words) and \
                ("rainy" if theme.name == "rain" else "night") not in moods:
            moods.append("rainy" if theme.name == "rain" else "night")
    instruments: list[str] = []
    without: list[str] = []
    for name in INSTRUMENTS:
        if text.find(name, negated=True):
            without.append(name)
        elif text.find(name) and not any(name in i for i in instruments):
            instruments.append(name)
    tempo = _tempo(text)
    key = _key(text.original if not text.quotes else text.rest)
    generator = "musicgen" if text.has("musicgen") else "arrangement" if text.has(
        {"midi", "arrangement", "fluidsynth", "soundfont"}) else "auto"
    return {"generator": generator, "genre": genre, "moods": moods[:8], "tempo_bpm": tempo, "key": key,
            "instrumentation": instruments[:16], "without": without[:16]}


def _ordered(words: set[str], text: _Text) -> list[str]:
    hits = [(text.find(w)[0], w) for w in words if text.find(w)]
    return [w for _, w in sorted(hits)]


def _phrase_in(lower: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", lower) is not None


def _tempo(text: _Text) -> int | None:
    match = _BPM.search(text.lower)
    if match and 30 <= int(match.group("bpm")) <= 300:
        return int(match.group("bpm"))
    if text.has({"very slow", "super slow", "really slow"}):
        return 60
    if text.has({"slow", "slower", "downtempo", "laid-back", "laid back", "relaxed", "sleepy", "lazy"}):
        return 72
    if text.has({"mid-tempo", "midtempo", "medium tempo", "moderate tempo"}):
        return 100
    if text.has({"very fast", "super fast", "frantic", "breakneck"}):
        return 160
    if text.has({"fast", "faster", "uptempo", "up-tempo", "energetic", "high energy", "high-energy", "driving",
                 "quick"}):
        return 128
    return None


def _key(text: str) -> str | None:
    for match in _KEY.finditer(text):
        tonic, mode = match.group("tonic"), match.group("mode")
        acc = (match.group("acc") or "").strip(" -").lower()
        if tonic.islower() and not (acc or mode):
            continue  # "in a ..." is an article
        if tonic.islower() and tonic == "a" and acc == "b" and not mode:
            continue
        name = tonic.upper() + ("#" if acc in ("#", "♯", "sharp") else "b" if acc in ("b", "♭", "flat") else "")
        quality = "minor" if mode in ("minor", "min", "m") else "major"
        return _enharmonic(name) + " " + quality
    return None


def _enharmonic(name: str) -> str:
    """Names the planner's key pattern accepts for every tonic ("E#" → "F", "Cb" → "B")."""
    return {"E#": "F", "B#": "C", "Fb": "E", "Cb": "B"}.get(name, name)


def _vocals(text: _Text, quotes: dict[str, str], language: str | None, *, voiced: bool) -> dict[str, Any]:
    spoken = text.has({"spoken word", "speak the lyrics", "spoken lyrics", "spoken vocals", "say the lyrics",
                       "read the lyrics", "recite the lyrics", "speak them", "rap", "rapping", "raps", "rapped",
                       "talk over"}) or text.has({"sing", "singing", "sung", "sings"}, negated=True)
    sections = [s for s in ("verse", "chorus", "bridge") if text.find(s) or text.find(s + "s")]
    # "one verse and a chorus", "a verse, a chorus and a bridge": the form is given
    counted = [s for s in sections if any(text.tokens[i - 1] in ("a", "one", "the", "single") for i in text.find(s)
                                          if i)]
    only = text.has({"just a", "only a", "just the", "only the", "a short"}) or len(sections) == 1 or (
        len(counted) >= 2 and counted == sections)
    lyrics = quotes.get("lyrics")
    return {"delivery": "spoken" if spoken and not text.has({"sing", "sung", "singing", "sings"}) else "sung",
            "lyrics": {"source": "given", "text": lyrics[:10000], "language": language or detect_language(lyrics)}
            if lyrics else {"source": "write", "language": language or "en"},
            "voice": "trained" if voiced else "default",
            "sections": sections if only and sections else []}


def _narration(text: _Text, quotes: dict[str, str], language: str | None, *, voiced: bool) -> dict[str, Any]:
    script = quotes.get("script") or (quotes.get("lyrics") if "lyrics" in quotes and not text.has(VOCAL_WORDS)
                                      else None)
    start_s = 0.0
    return {"text": {"source": "given", "text": script[:10000], "language": language or detect_language(script)}
            if script else {"source": "write", "language": language or "en"},
            "voice": "trained" if voiced else "default", "start_s": start_s,
            "speed": 0.85 if text.has({"slowly", "slow", "calm", "calmly", "gentle", "soothing"}) else 1.15
            if text.has({"quickly", "fast", "energetic", "excited", "hype"}) else 1.0}


def _video(text: _Text, video_s: float | None, theme: str | None) -> dict[str, Any]:
    aspect, height = "16:9", None
    size = _SIZE.search(text.lower)
    if size:
        width, height = int(size.group("w")), int(size.group("h"))
        aspect = _ratio_name(width, height)
    for match in _RATIO.finditer(text.lower):
        a, b = int(match.group("a")), int(match.group("b"))
        if (a, b) in ((16, 9), (9, 16), (1, 1), (4, 3), (3, 4), (21, 9), (4, 5), (5, 4), (3, 2), (2, 3)):
            aspect = f"{a}:{b}"
    if text.has({"vertical", "portrait", "tiktok", "reels", "reel", "story", "stories", "shorts", "youtube short",
                 "phone", "9 16"}):
        aspect = "9:16"
    elif text.has({"square", "instagram post", "1 1"}):
        aspect = "1:1"
    elif text.has({"ultrawide", "ultra-wide", "cinemascope", "anamorphic"}):
        aspect = "21:9"
    elif text.has({"widescreen", "landscape", "horizontal", "youtube"}):
        aspect = "16:9"
    height_match = _HEIGHT.search(text.lower)
    if height_match:
        height = int(height_match.group("h"))
    elif text.has({"4k", "uhd", "2160p"}):
        height = 2160
    elif text.has({"full hd", "fhd"}):
        height = 1080
    elif text.has({"hd"}):
        height = 720
    fps_match = _FPS.search(text.lower) or _FPS_ALT.search(text.lower)
    fps = int(fps_match.group("fps")) if fps_match and 1 <= int(fps_match.group("fps")) <= 60 else None
    kind = "auto"
    if text.has(VISUALIZER_WORDS):
        kind = "visualizer"
    elif text.has(GENERATED_VIDEO_WORDS):
        kind = "generated"
    return {"kind": kind, "prompt": _video_prompt(text) or theme, "aspect": aspect, "height": height, "fps": fps,
            "duration_s": video_s, "lyrics_overlay": not text.has({"lyrics", "subtitles", "captions", "text"},
                                                                  negated=True),
            "palette": _palette(text)}


def _ratio_name(width: int, height: int) -> str:
    from math import gcd

    g = gcd(width, height) or 1
    a, b = width // g, height // g
    return f"{a}:{b}" if a < 100 and b < 100 else ("16:9" if width >= height else "9:16")


def _video_prompt(text: _Text) -> str | None:
    match = re.search(r"\b(?:video|animation|clip|visuals|footage|reel)\s+(?:of|showing|with|where|featuring)\s+"
                      r"(?P<what>[^,.;!?]{3,200})", text.rest, re.IGNORECASE)
    if not match:
        return None
    # "a video of me surfing and 2 stills": the scene ends where the next request begins
    what = re.split(r"\s+(?:and|plus|then|with)\s+(?:a|an|the|some|\d+|two|three|four|five)\s",
                    match.group("what"), maxsplit=1)[0]
    return what.strip()


def _palette(text: _Text) -> str | None:
    colours = [w for w in ("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "magenta", "cyan",
                           "teal", "gold", "golden", "silver", "black", "white", "grey", "gray", "pastel", "neon",
                           "indigo", "amber", "sepia", "monochrome", "sunset", "rainbow")
               if text.find(w) and not text.find(w, negated=True)]
    return " ".join(colours) or None


def _about_me(text: _Text) -> bool:
    return text.has({"of me", "me surfing", "my face", "my selfies", "myself", "me as", "me in", "me dancing",
                     "me running", "me playing", "me walking", "me riding", "me skating"})


def _theme(text: _Text) -> str | None:
    match = _ABOUT.search(text.rest)
    if match and match.group(0).lower().startswith("about"):
        return _clean_theme(match.group("what"))
    words = [t for t, neg in zip(text.tokens, text.negated, strict=True)
             if not neg and t not in _STOP and t not in MUSIC_WORDS and t not in VIDEO_WORDS
             and t not in VOCAL_WORDS and t not in NARRATION_WORDS and t != "quoted" and not t.isdigit()
             and not re.fullmatch(r"\d+(?:s|p|fps|bpm|k)?", t)]
    return " ".join(dict.fromkeys(words))[:400] or None


def _clean_theme(value: str) -> str | None:
    value = re.sub(r"\s+", " ", value).strip()
    value = re.split(r"\b(?:with|and a|and an|in the style|at \d|for \d|\d+\s*(?:s|sec|seconds?|min|minutes?)\b)",
                     value, maxsplit=1, flags=re.IGNORECASE)[0].strip()
    return value[:400] or None


def _title(prompt: str) -> str | None:
    match = _TITLE.search(prompt)
    if not match:
        return None
    return (match.group("q") or match.group("w") or "").strip()[:200] or None


def _seed(lower: str) -> int | None:
    match = _SEED.search(lower)
    return int(match.group("seed")) if match and int(match.group("seed")) < 2**32 else None


def _count(pattern: re.Pattern[str], lower: str) -> int | None:
    match = pattern.search(lower)
    if not match:
        return None
    value = _number(match.group("n")) or 0
    return max(1, min(8, int(value))) if value else None


def _known_style(what: str) -> bool:
    lower = what.lower()
    return any(_phrase_in(lower, g) for g in GENRE_WORDS) or any(_phrase_in(lower, m) for m in MOOD_WORDS)


def _fmt_s(seconds: float) -> str:
    if seconds >= 60:
        minutes = seconds / 60
        return f"{minutes:g} min" if minutes == int(minutes) else f"{seconds:g} s"
    return f"{seconds:g} s"


__all__ = ["MAX_PIECE_S", "Duration", "NotUnderstood", "brief_from_text", "detect_language", "find_durations",
           "read_text"]
