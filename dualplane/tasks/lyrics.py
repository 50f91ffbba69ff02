"""Lyrics for a theme: a title and sections of rhyming lines, written by rules (no model call).

The request's words are not the lyrics. A theme (rain, the sea, a city at night...) is read from
them, and the song is built from a bank of hand-written rhyming couplets and hooks for that
theme: verses are couplets, a chorus repeats a hook that carries the title, a bridge turns the
theme around. Deterministic for a (theme, seed): plans are reproducible and testable.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Theme:
    name: str
    words: tuple[str, ...]
    titles: tuple[str, ...]
    hooks: tuple[tuple[str, str], ...]
    couplets: tuple[tuple[str, str], ...]


THEMES: tuple[Theme, ...] = (
    Theme("rain", ("rain", "rainy", "storm", "drizzle", "umbrella", "puddle", "wet", "raindrops"),
          ("Rain on the Window", "Under Grey Skies", "After the Rain"),
          (("Let it rain on the window", "I will wait here till it's through"),
           ("Every drop is a reason", "to stay a little longer with you")),
          (("The gutters sing a silver song", "the streetlights blur and hum along"),
           ("I count the drops upon the glass", "and let the slow grey hours pass"),
           ("Your coat still hanging by the door", "the rain is louder than before"),
           ("The city washes off its dust", "and rusted rails forget their rust"),
           ("We ran for cover, soaked and bright", "two shadows laughing in the night"),
           ("The clouds roll low across the town", "and every roof is looking down"))),
    Theme("night", ("night", "midnight", "moon", "moonlight", "dark", "late", "nocturnal", "evening"),
          ("Midnight Hours", "Moonlit Avenue", "After Dark"),
          (("Stay with me till the morning", "the night is ours to keep"),
           ("Under the midnight glow", "we never sleep")),
          (("The moon hangs low above the street", "and echoes follow tired feet"),
           ("A single window, yellow light", "keeps watch across the quiet night"),
           ("The radio plays soft and slow", "a song that only night owls know"),
           ("We drive with nowhere left to be", "the dark is wide enough for me"),
           ("The stars are scattered, thin and pale", "like notes inside a whispered tale"),
           ("The clocks have nothing left to say", "the night will carry us away"))),
    Theme("city", ("city", "street", "streets", "town", "downtown", "urban", "neon", "subway", "skyline"),
          ("Neon Avenue", "City Lights", "Downtown Hearts"),
          (("City lights, carry me home", "in a crowd I'm not alone"),
           ("Neon skies over the avenue", "every light is leading me to you")),
          (("The subway rumbles underground", "a heartbeat made of steel and sound"),
           ("Ten thousand windows, every one", "a story never told or done"),
           ("The taxis blur in red and gold", "the corner cafe's coffee's cold"),
           ("We climb the fire escape at dawn", "to watch the streetlights blinking on"),
           ("The crossing signals change again", "for strangers hurrying through the rain"),
           ("The skyline hums a restless tune", "beneath a tired, orange moon"))),
    Theme("ocean", ("ocean", "sea", "wave", "waves", "tide", "beach", "shore", "sail", "surf", "surfing", "coast"),
          ("Where the Tide Turns", "Salt and Silver", "Across the Water"),
          (("Take me out where the waves roll in", "where the blue begins"),
           ("The tide will bring me home", "I was never alone")),
          (("The gulls are circling overhead", "the morning sea is silver-red"),
           ("I left my footprints in the sand", "the water took them from my hand"),
           ("The salt wind tangles up my hair", "there's nothing but the ocean there"),
           ("The lighthouse blinks its patient eye", "on ships that pass the harbour by"),
           ("We rode the swell until the light", "turned every wave to gold and white"),
           ("The shore keeps every word we said", "in shells along the river bed"))),
    Theme("summer", ("summer", "sun", "sunny", "sunshine", "heat", "july", "beach", "warm", "golden"),
          ("Golden Summer", "Sunlit Days", "Endless July"),
          (("Oh, summer, don't you fade away", "let the sunlight stay"),
           ("Golden days are calling", "we're never falling")),
          (("The long days stretch like open roads", "with windows down and lighter loads"),
           ("The ice cream melts, the radios play", "we waste the best of every day"),
           ("We jump the fences, chase the light", "and fall asleep on fields at night"),
           ("Your freckles gather in the sun", "the summer's only just begun"),
           ("The heat is rising off the street", "the rhythm's pounding with our feet"),
           ("We swear we'll never lose this glow", "the way that only summers know"))),
    Theme("winter", ("winter", "snow", "snowy", "cold", "ice", "frost", "december", "christmas", "fireplace"),
          ("Snowfall", "A Winter Song", "Frost on the Glass"),
          (("Hold me close when the snow comes down", "warm me up in this frozen town"),
           ("Winter light, winter light", "keep me warm tonight")),
          (("The snow is falling soft and slow", "on rooftops in the streetlight glow"),
           ("Our breath is hanging in the air", "there's frost on every window there"),
           ("The fire crackles, low and bright", "against the long December night"),
           ("We leave our footprints, side by side", "across the white fields, far and wide"),
           ("The rivers sleep beneath the ice", "and every breath is worth the price"),
           ("The world is quiet, wrapped in white", "and nothing moves till morning light"))),
    Theme("love", ("love", "heart", "romance", "romantic", "kiss", "together", "darling", "wedding", "valentine"),
          ("All of My Heart", "Only You", "Heart to Heart"),
          (("You are the song I keep singing", "you are the light I keep bringing"),
           ("Hold on to me, hold on to love", "you're all I'm dreaming of")),
          (("I saw you first across the room", "like sunlight breaking through the gloom"),
           ("Your laughter is my favourite sound", "the only place I've ever found"),
           ("We danced without a single song", "and knew that we had known all along"),
           ("You keep my secrets, keep my name", "and every day feels new, the same"),
           ("If all the stars went out tonight", "your eyes would still be all the light"),
           ("I'd cross a thousand miles of sea", "to hear you say you're home with me"))),
    Theme("lonely", ("lonely", "alone", "sad", "melancholic", "melancholy", "heartbreak", "goodbye", "lost",
                     "missing", "tears"),
          ("Empty Rooms", "The Last Goodbye", "Nobody Knows"),
          (("And I'm still here alone", "waiting by the phone"),
           ("Nobody knows how the silence goes", "nobody knows")),
          (("The coffee's cold, the chair is bare", "your shadow's still sitting there"),
           ("I keep the letters in a drawer", "I don't read them anymore"),
           ("The hallway echoes with my name", "but no one's calling it the same"),
           ("I wear the quiet like a coat", "and swallow every word I wrote"),
           ("The photographs have turned to grey", "I watched the colours fade away"),
           ("I tell the mirror I'm okay", "and hope it listens, come what may"))),
    Theme("road", ("road", "drive", "driving", "highway", "train", "trains", "journey", "travel", "miles",
                   "roadtrip", "car", "railway", "station"),
          ("Miles to Go", "The Open Road", "Last Train Home"),
          (("Keep on rolling down the line", "we'll be fine, we'll be fine"),
           ("Miles and miles and miles to go", "the road is all we know")),
          (("The wheels are singing on the track", "and nothing's ever looking back"),
           ("The towns go by in amber light", "we chase the white lines through the night"),
           ("A station clock, a paper cup", "the morning train is warming up"),
           ("The map is folded on the seat", "the engine hums beneath our feet"),
           ("We left the city in the rain", "and watched it vanish from the train"),
           ("The mountains rise, the rivers bend", "the road is longer than the end"))),
    Theme("space", ("space", "stars", "star", "galaxy", "cosmic", "planet", "planets", "universe", "orbit",
                    "astronaut", "sky"),
          ("Starlight", "Into the Blue", "Orbit"),
          (("Fly me up to the stars tonight", "into the endless light"),
           ("We are dust in a silver sky", "learning how to fly")),
          (("The planets turn without a sound", "a thousand miles above the ground"),
           ("We trace the comets with our hands", "and draw the maps of distant lands"),
           ("The starlight left so long ago", "to reach the places we don't know"),
           ("We float where gravity lets go", "and watch the blue world spin below"),
           ("The galaxy is one long song", "and we've been humming it along"),
           ("The moon is silver, cold and wide", "with all our wishes tucked inside"))),
    Theme("nature", ("forest", "woods", "trees", "mountain", "mountains", "river", "nature", "garden",
                     "flowers", "spring", "birds", "meadow"),
          ("Wild Green", "Where the River Goes", "Evergreen"),
          (("Take me back to the wild green", "the truest place I've ever been"),
           ("Where the river goes", "only the forest knows")),
          (("The pines are whispering overhead", "of every path the wanderers tread"),
           ("The river runs through stone and moss", "and carries all that we have lost"),
           ("The morning birds begin to call", "the light comes filtering through it all"),
           ("We climbed until the air was thin", "and felt the quiet settle in"),
           ("The flowers open one by one", "and turn their faces to the sun"),
           ("The mountain holds the evening glow", "above the sleeping fields below"))),
    Theme("home", ("home", "nostalgic", "nostalgia", "childhood", "memories", "memory", "remember", "family",
                   "mother", "father", "old"),
          ("The House We Grew Up In", "Back Home", "Old Photographs"),
          (("Take me home, take me home", "to the place I've always known"),
           ("I remember, I remember", "every golden September")),
          (("The porch light's on, the gate still creaks", "the kitchen smells of summer weeks"),
           ("We carved our names into the tree", "and swore that's where we'd always be"),
           ("The attic holds our paper crowns", "from all those summers out of town"),
           ("My mother's singing down the hall", "her voice is warmer than it all"),
           ("The bicycle is rusting still", "beside the house upon the hill"),
           ("I drive past slowly, just to see", "the window where you waved at me"))),
    Theme("party", ("party", "dance", "dancing", "club", "celebrate", "celebration", "friday", "weekend",
                    "festival", "rave"),
          ("All Night Long", "Turn It Up", "Weekend Fever"),
          (("Turn it up, turn it up", "we're never gonna stop"),
           ("All night long, all night long", "we'll dance until the dawn")),
          (("The bass is shaking through the floor", "we came to move, we came for more"),
           ("The lights are flashing, blue and red", "forget the words we should have said"),
           ("Put your hands up to the sky", "tonight we're never saying goodbye"),
           ("The city's ours until the sun", "our hearts are beating all as one"),
           ("We lose ourselves inside the sound", "our feet will never touch the ground"),
           ("The weekend's calling out our names", "tonight we're burning like the flames"))),
    Theme("strength", ("fire", "strong", "strength", "rise", "fight", "brave", "hero", "epic", "power",
                       "victory", "courage", "warrior"),
          ("Rise", "Unbroken", "Fire in the Dark"),
          (("We will rise, we will rise", "with the fire in our eyes"),
           ("Unbroken, unafraid", "we're the promise that we made")),
          (("They said the mountain was too high", "we climbed it anyway to touch the sky"),
           ("The storm can break but we will stand", "with every scar upon our hands"),
           ("We light a fire against the cold", "and write the stories to be told"),
           ("The drums are calling from the hill", "we've come too far to stand here still"),
           ("We carry every fallen name", "and keep them burning like a flame"),
           ("The dark is long but we are more", "than anything that came before"))),
    Theme("dreams", ("dream", "dreams", "dreamy", "sleep", "lullaby", "float", "floating", "cloud", "clouds",
                     "wish", "hope"),
          ("Daydream", "Somewhere in a Dream", "Cloud Nine"),
          (("Close your eyes and drift away", "dreams will find you where you stay"),
           ("Somewhere in a dream", "nothing's what it seems")),
          (("The clouds are soft as paper sails", "that carry us through fairy tales"),
           ("We float above the quiet town", "and never want to come back down"),
           ("The colours melt like evening skies", "reflected in your sleepy eyes"),
           ("A lullaby the stars once knew", "is humming softly, just for you"),
           ("We build our castles out of air", "and live a little while up there"),
           ("The morning waits, but not just yet", "there's one more dream we won't forget"))),
)
GENERAL = Theme("life", (), ("Here and Now", "Open Sky", "This Moment"),
                (("Here and now, here and now", "we'll find our way somehow"),
                 ("This is our moment", "and we won't let it go")),
                (("The morning breaks a brand new day", "and all the shadows fade away"),
                 ("We walk the long way, you and I", "beneath the wide and open sky"),
                 ("The little things we never said", "are singing softly in my head"),
                 ("We chase the light from door to door", "and find we wanted nothing more"),
                 ("The clock is ticking, slow and kind", "and leaves the heavy days behind"),
                 ("We hum a tune we half recall", "and somehow it's enough for all")))

_WORD = re.compile(r"[a-z]+")


def pick_theme(text: str) -> Theme:
    """The theme whose words occur most in ``text`` (whole words); the general one when none do."""
    words = _WORD.findall(text.lower())
    best, best_score = GENERAL, 0
    for theme in THEMES:
        score = sum(1 for w in words if w in theme.words)
        if score > best_score:
            best, best_score = theme, score
    return best


def themes_in(text: str) -> list[str]:
    """Names of every theme ``text`` touches, strongest first (for titles, moods and palettes)."""
    words = _WORD.findall(text.lower())
    scored = [(sum(1 for w in words if w in t.words), t.name) for t in THEMES]
    return [name for score, name in sorted(scored, key=lambda s: -s[0]) if score > 0]


def write_lyrics(theme_text: str, section_names: Sequence[str], *, seed: int = 0,
                 title: str | None = None, only: Sequence[str] = ()) -> dict[str, Any]:
    """A song for ``theme_text``: ``{"title", "theme", "sections": [{"name", "lines"}]}``.

    ``section_names`` is the song's form (intro, verse, chorus, ...); instrumental sections
    (intro, outro, theme) get no lines. ``only`` limits the words to those section kinds
    (e.g. just a chorus).
    """
    theme = pick_theme(theme_text)
    rng = random.Random(f"{theme.name}|{seed}")
    song_title = title or rng.choice(theme.titles)
    hook = rng.choice(theme.hooks)
    couplets = list(theme.couplets)
    rng.shuffle(couplets)
    pool = iter(couplets * 4)
    sections: list[dict[str, object]] = []
    for name in section_names:
        sung = name in ("verse", "chorus", "bridge") and (not only or name in only)
        if not sung:
            sections.append({"name": name, "lines": []})
        elif name == "chorus":
            sections.append({"name": name, "lines": [hook[0], hook[1], hook[0], _title_line(song_title, hook)]})
        elif name == "bridge":
            first, second = next(pool)
            sections.append({"name": name, "lines": [first, second]})
        else:
            a, b = next(pool), next(pool)
            sections.append({"name": name, "lines": [a[0], a[1], b[0], b[1]]})
    return {"title": song_title, "theme": theme.name, "sections": sections}


def _title_line(title: str, hook: tuple[str, str]) -> str:
    """The chorus ends on the title unless the hook already says it."""
    if title.lower() in " ".join(hook).lower():
        return hook[1]
    return f"{title}, {title.lower()}"


__all__ = ["GENERAL", "THEMES", "Theme", "pick_theme", "themes_in", "write_lyrics"]
